//! Zone transfer replies (RFC 5936 §2.2): the zone's records spread over as many messages as
//! they need, each a whole DNS message with the client's ID and question, the SOA first and last.

use hickory_proto::op::ResponseCode;

use super::request::Request;
use super::response::{ReplyFlags, write_header, write_opt, write_question};

/// Messages are cut at about this size (NSD's are smaller, Knot's larger): few enough for a big
/// zone, and small enough that building one (under a millisecond) is all a query waits for
/// when a transfer shares its thread.
const MESSAGE_TARGET: usize = 16 * 1024;

/// Packs records into transfer messages.
pub struct TransferPacker<'r> {
    req: &'r Request,
    current: Vec<u8>,
    records: u16,
}

impl<'r> TransferPacker<'r> {
    pub fn new(req: &'r Request) -> Self {
        let mut packer = TransferPacker {
            req,
            current: Vec::new(),
            records: 0,
        };
        packer.start();
        packer
    }

    fn start(&mut self) {
        self.current.clear();
        self.records = 0;
        let flags = ReplyFlags {
            authoritative: true,
            recursion_available: false,
        };
        write_header(
            &mut self.current,
            self.req,
            ResponseCode::NoError,
            flags,
            false,
            [0; 3],
        );
        write_question(&mut self.current, self.req);
    }

    /// Adds one record (`owner` in wire form, then type, class, TTL, length and data); returns
    /// the previous message when this record starts a new one.
    pub fn push(&mut self, owner: &[u8], record: &[u8]) -> Option<Vec<u8>> {
        let full =
            self.records > 0 && self.current.len() + owner.len() + record.len() > MESSAGE_TARGET;
        let done = full.then(|| self.take());
        self.current.extend_from_slice(owner);
        self.current.extend_from_slice(record);
        self.records += 1;
        done
    }

    /// The last message.
    pub fn finish(mut self) -> Vec<u8> {
        self.take()
    }

    fn take(&mut self) -> Vec<u8> {
        self.current[6..8].copy_from_slice(&self.records.to_be_bytes());
        write_opt(&mut self.current, self.req, ResponseCode::NoError);
        let message = std::mem::take(&mut self.current);
        self.start();
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::request::{Parsed, parse};
    use hickory_proto::op::Message;

    #[test]
    fn records_spread_over_whole_messages() {
        let query =
            b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06global\x00\x00\xfc\x00\x01";
        let Parsed::Query(req) = parse(query) else {
            panic!("AXFR query parses")
        };
        let mut packer = TransferPacker::new(&req);
        let owner = b"\x01a\x06global\x00";
        // An A record: type 1, class IN, TTL 30, 4 bytes.
        let record = b"\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\xf0\x00\x00\x01";
        let mut messages = Vec::new();
        for _ in 0..5000 {
            messages.extend(packer.push(owner, record));
        }
        messages.push(packer.finish());
        assert!(messages.len() > 1);
        let mut total = 0;
        for m in &messages {
            assert!(m.len() <= MESSAGE_TARGET + owner.len() + record.len());
            let decoded = Message::from_vec(m).unwrap();
            assert_eq!(decoded.metadata.id, 0x1234);
            assert!(decoded.metadata.authoritative);
            assert_eq!(decoded.queries.len(), 1);
            total += decoded.answers.len();
        }
        assert_eq!(total, 5000);
    }
}
