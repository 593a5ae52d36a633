//! Zone transfers out: the messages of an AXFR, or of an IXFR (RFC 1995), streamed from one
//! table snapshot, so a transfer sees one serial however long it takes and never holds up
//! queries, which keep reading the current table. An IXFR from a serial the table's journal
//! reaches back to gets the differences since (§4, one SOA-delimited set per serial); any other
//! gets the whole zone in AXFR form.

use std::borrow::Cow;
use std::iter::once;

use tracing::warn;

use crate::wire::request::Request;
use crate::wire::transfer::TransferPacker;
use crate::wire::tsig::{ReplySigner, unix_now};
use crate::zone::{Delta, NameTable, OwnedRecord};

/// The transfer messages for `req`, whose question names a zone apex of `table`, in order.
pub struct TransferStream<'a> {
    packer: Option<TransferPacker<'a>>,
    /// Every record to send, both SOAs included, in order.
    content: Box<dyn Iterator<Item = OwnedRecord<'a>> + Send + 'a>,
    records: usize,
    incremental: bool,
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
        let soa = (Cow::Borrowed(apex), content.soa);
        let deltas = (req.ixfr_serial).and_then(|serial| table.journal().since(apex, serial));
        let incremental = deltas.is_some();
        let between: Box<dyn Iterator<Item = OwnedRecord<'a>> + Send + 'a> = match deltas {
            Some(deltas) => Box::new(deltas.flat_map(move |d| delta_records(apex, d))),
            None => content.records,
        };
        // RFC 5936 §2.2 and RFC 1995 §4: the current SOA opens the transfer and closes it.
        Some(TransferStream {
            packer: Some(TransferPacker::new(req)),
            content: Box::new(once(soa.clone()).chain(between).chain(once(soa))),
            records: 0,
            incremental,
            signer,
        })
    }

    /// Records sent so far, both SOAs included.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Whether this is an IXFR answered with differences rather than the whole zone.
    pub fn incremental(&self) -> bool {
        self.incremental
    }
}

/// One serial's differences as an IXFR carries them: the old SOA, what went, the new SOA, what
/// came.
fn delta_records<'a>(apex: &'a [u8], d: &'a Delta) -> impl Iterator<Item = OwnedRecord<'a>> + 'a {
    let record =
        |(owner, record): &'a (Box<[u8]>, Box<[u8]>)| (Cow::Borrowed(&owner[..]), &record[..]);
    once((Cow::Borrowed(apex), &d.from_soa[..]))
        .chain(d.deleted.iter().map(record))
        .chain(once((Cow::Borrowed(apex), &d.to_soa[..])))
        .chain(d.added.iter().map(record))
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
            return None;
        }
        Some(message)
    }
}

impl TransferStream<'_> {
    fn unsigned(&mut self) -> Option<Vec<u8>> {
        let packer = self.packer.as_mut()?;
        for (owner, record) in self.content.by_ref() {
            self.records += 1;
            if let Some(message) = packer.push(&owner, record) {
                return Some(message);
            }
        }
        Some(self.packer.take()?.finish())
    }
}
