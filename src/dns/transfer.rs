//! Zone transfers out: the messages of an AXFR (or an IXFR answered with the whole zone, RFC 1995
//! §4) streamed from one table snapshot, so a transfer sees one serial however long it takes and
//! never holds up queries, which keep reading the current table.

use tracing::warn;

use crate::wire::request::Request;
use crate::wire::transfer::TransferPacker;
use crate::wire::tsig::{ReplySigner, unix_now};
use crate::zone::{NameTable, ZoneContent};

/// The transfer messages for `req`, whose question names a zone apex of `table`, in order.
pub struct TransferStream<'a> {
    packer: Option<TransferPacker<'a>>,
    content: ZoneContent<'a>,
    apex: &'a [u8],
    records: usize,
    /// The message with the closing SOA, when it did not fit the one before.
    pending: Option<Vec<u8>>,
    /// Signs each message, when the request was signed.
    signer: Option<Box<ReplySigner>>,
}

impl<'a> TransferStream<'a> {
    /// `None` when the question names no zone of `table`.
    pub fn new(
        req: &'a Request,
        table: &'a NameTable,
        signer: Option<Box<ReplySigner>>,
    ) -> Option<Self> {
        let apex = req.question.as_ref()?.name.lower();
        let content = table.zone_content(apex)?;
        let mut packer = TransferPacker::new(req);
        // RFC 5936 §2.2: the SOA opens the transfer (and closes it).
        let opened = packer.push(apex, content.soa);
        debug_assert!(opened.is_none());
        Some(TransferStream {
            packer: Some(packer),
            content,
            apex,
            records: 2,
            pending: None,
            signer,
        })
    }

    /// Records sent or to be sent so far, both SOAs included.
    pub fn records(&self) -> usize {
        self.records
    }
}

impl Iterator for TransferStream<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut message = self.unsigned()?;
        if let Some(signer) = self.signer.as_mut()
            && let Err(error) = signer.sign(&mut message, unix_now())
        {
            // A secondary cannot check an unsigned message: end the transfer.
            warn!(%error, "cannot sign a zone transfer message; ending the transfer");
            self.packer = None;
            self.pending = None;
            return None;
        }
        Some(message)
    }
}

impl TransferStream<'_> {
    fn unsigned(&mut self) -> Option<Vec<u8>> {
        if let Some(message) = self.pending.take() {
            return Some(message);
        }
        let packer = self.packer.as_mut()?;
        for (owner, record) in self.content.records.by_ref() {
            self.records += 1;
            if let Some(message) = packer.push(&owner, record) {
                return Some(message);
            }
        }
        let mut packer = self.packer.take()?;
        // The closing SOA; when it starts a message of its own, that one follows.
        match packer.push(self.apex, self.content.soa) {
            Some(full) => {
                self.pending = Some(packer.finish());
                Some(full)
            }
            None => Some(packer.finish()),
        }
    }
}
