//! DNS message parser for captured responses (RFC 1035 §4, RFC 3596 for AAAA).
//!
//! The input is whatever a packet socket delivered, so every read is bounds
//! checked and every failure is a [`DnsError`] variant that the caller counts.
//! Compression pointers may point anywhere in the message, forward too, as
//! the stub resolvers of glibc and busybox accept. Loops end at a cap on the
//! jumps per name: half the message length, as each pointer takes two bytes,
//! and at least [`MAX_POINTER_JUMPS`]. Names are rendered in master-file text form: bytes outside printable
//! ASCII become `\DDD` and a dot or backslash inside a label is escaped, so the
//! text maps back to the wire labels without loss.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Maximum wire length of a domain name, including length octets (RFC 1035 §3.1).
pub const MAX_NAME_WIRE_LEN: usize = 255;
/// Maximum length of one label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;
/// Minimum cap on compression pointers followed while reading one name. A
/// name of at most 127 labels needs no more pointers than labels, but a
/// message may chain more, and clients follow up to half its length.
pub const MAX_POINTER_JUMPS: usize = 127;
/// Maximum answer records kept per message; the rest are dropped and reported
/// through [`Message::answers_dropped`].
pub const MAX_ANSWERS: usize = 64;
/// Maximum questions read per message. Real resolvers send exactly one.
pub const MAX_QUESTIONS: usize = 8;

const HEADER_LEN: usize = 12;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;

/// A parse failure, with the byte offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("dns message truncated at offset {offset}")]
    Truncated { offset: usize },
    #[error("dns label at offset {offset} uses reserved type bits {bits:#04x}")]
    ReservedLabelType { offset: usize, bits: u8 },
    #[error("dns name at offset {offset} is longer than {MAX_NAME_WIRE_LEN} bytes")]
    NameTooLong { offset: usize },
    #[error("dns name at offset {offset} follows too many compression pointers (a loop)")]
    TooManyPointers { offset: usize },
    #[error("dns record type {rtype} at offset {offset} has invalid rdata length {len}")]
    BadRdataLength { offset: usize, rtype: u16, len: u16 },
    #[error("dns message is a query, not a response")]
    NotResponse,
}

impl DnsError {
    /// Short stable name of the failure, used as a counter key.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsError::Truncated { .. } => "truncated",
            DnsError::ReservedLabelType { .. } => "reserved_label_type",
            DnsError::NameTooLong { .. } => "name_too_long",
            DnsError::TooManyPointers { .. } => "too_many_pointers",
            DnsError::BadRdataLength { .. } => "bad_rdata_length",
            DnsError::NotResponse => "not_response",
        }
    }
}

/// One entry of the question section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// Decoded record data for the types the sensor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// Any other type; only its length is kept.
    Other {
        len: u16,
    },
}

/// One resource record of the answer section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub name: String,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RecordData,
}

/// A parsed DNS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    /// The 16 flag bits of the header (QR, opcode, AA, TC, RD, RA, Z, RCODE).
    pub flags: u16,
    pub questions: Vec<Question>,
    pub answers: Vec<Answer>,
    /// Answers beyond [`MAX_ANSWERS`] that were skipped.
    pub answers_dropped: usize,
}

impl Message {
    /// Response code (low four bits of the flags).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }

    /// True when the TC bit is set: the answer section may be incomplete.
    pub fn truncated(&self) -> bool {
        self.flags & 0x0200 != 0
    }
}

/// Parses a DNS response. Queries are rejected with [`DnsError::NotResponse`].
///
/// The question and answer sections are read; authority and additional
/// records are ignored. A message whose answer section ends early returns the
/// answers read so far only when the header's TC bit is set, because a server
/// sets that bit when it cut the message itself.
pub fn parse_response(packet: &[u8]) -> Result<Message, DnsError> {
    let mut reader = Reader { packet, pos: 0 };
    let id = reader.u16()?;
    let flags = reader.u16()?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::NotResponse);
    }
    let qdcount = reader.u16()? as usize;
    let ancount = reader.u16()? as usize;
    reader.u16()?; // NSCOUNT
    reader.u16()?; // ARCOUNT
    debug_assert_eq!(reader.pos, HEADER_LEN);

    let mut questions = Vec::with_capacity(qdcount.min(MAX_QUESTIONS));
    for index in 0..qdcount {
        let name = reader.name()?;
        let qtype = reader.u16()?;
        let qclass = reader.u16()?;
        if index < MAX_QUESTIONS {
            questions.push(Question {
                name,
                qtype,
                qclass,
            });
        }
    }

    let mut answers = Vec::with_capacity(ancount.min(MAX_ANSWERS));
    let mut answers_dropped = 0;
    for _ in 0..ancount {
        match reader.answer() {
            Ok(answer) if answers.len() < MAX_ANSWERS => answers.push(answer),
            Ok(_) => answers_dropped += 1,
            Err(DnsError::Truncated { .. }) if flags & 0x0200 != 0 => break,
            Err(error) => return Err(error),
        }
    }

    Ok(Message {
        id,
        flags,
        questions,
        answers,
        answers_dropped,
    })
}

struct Reader<'a> {
    packet: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, len: usize) -> Result<&[u8], DnsError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.packet.len())
            .ok_or(DnsError::Truncated { offset: self.pos })?;
        let slice = &self.packet[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name at the current position and moves
    /// past its wire form (up to and including the first pointer).
    fn name(&mut self) -> Result<String, DnsError> {
        let (text, end) = read_name(self.packet, self.pos)?;
        self.pos = end;
        Ok(text)
    }

    fn answer(&mut self) -> Result<Answer, DnsError> {
        let name = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.u32()?;
        let rdlength = self.u16()?;
        let rdata_offset = self.pos;
        let rdata = self.bytes(rdlength as usize)?;

        let bad_length = DnsError::BadRdataLength {
            offset: rdata_offset,
            rtype,
            len: rdlength,
        };
        let data = match rtype {
            TYPE_A => {
                let octets: [u8; 4] = rdata.try_into().map_err(|_| bad_length)?;
                RecordData::A(Ipv4Addr::from(octets))
            }
            TYPE_AAAA => {
                let octets: [u8; 16] = rdata.try_into().map_err(|_| bad_length)?;
                RecordData::Aaaa(Ipv6Addr::from(octets))
            }
            TYPE_CNAME => {
                // The target may be compressed against the whole message, but
                // its wire form must end inside the rdata. Bytes after it are
                // ignored, as clients ignore them.
                let (target, end) = read_name(self.packet, rdata_offset)?;
                if end > self.pos {
                    return Err(bad_length);
                }
                RecordData::Cname(target)
            }
            _ => RecordData::Other { len: rdlength },
        };

        Ok(Answer {
            name,
            rtype,
            class,
            ttl,
            data,
        })
    }
}

/// Reads the name starting at `start`. Returns its text form and the offset
/// just past its wire form in the original position.
fn read_name(packet: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut text = String::new();
    let mut pos = start;
    let mut end_after_first_pointer = None;
    let mut wire_len = 0usize;
    let mut jumps = 0usize;

    loop {
        let len_byte = *packet.get(pos).ok_or(DnsError::Truncated { offset: pos })?;
        match len_byte & 0xc0 {
            0x00 => {
                let len = len_byte as usize;
                wire_len += len + 1;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(DnsError::NameTooLong { offset: start });
                }
                if len == 0 {
                    let end = end_after_first_pointer.unwrap_or(pos + 1);
                    if text.is_empty() {
                        text.push('.');
                    }
                    return Ok((text, end));
                }
                let label = packet
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(DnsError::Truncated { offset: pos + 1 })?;
                if !text.is_empty() {
                    text.push('.');
                }
                push_label(&mut text, label);
                pos += 1 + len;
            }
            0xc0 => {
                let low = *packet
                    .get(pos + 1)
                    .ok_or(DnsError::Truncated { offset: pos + 1 })?;
                let target = (((len_byte & 0x3f) as usize) << 8) | low as usize;
                jumps += 1;
                if jumps > MAX_POINTER_JUMPS.max(packet.len() / 2) {
                    return Err(DnsError::TooManyPointers { offset: start });
                }
                end_after_first_pointer.get_or_insert(pos + 2);
                pos = target;
            }
            bits => {
                return Err(DnsError::ReservedLabelType { offset: pos, bits });
            }
        }
    }
}

/// Appends one label in master-file text form.
fn push_label(text: &mut String, label: &[u8]) {
    for &byte in label {
        match byte {
            b'.' | b'\\' => {
                text.push('\\');
                text.push(byte as char);
            }
            0x21..=0x7e => text.push(byte as char),
            _ => {
                text.push('\\');
                text.push_str(&format!("{byte:03}"));
            }
        }
    }
}

/// Name of a record type for the `DNS_TYPE` field's text companion.
pub fn type_name(rtype: u16) -> Option<&'static str> {
    Some(match rtype {
        TYPE_A => "A",
        2 => "NS",
        TYPE_CNAME => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        TYPE_AAAA => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        _ => return None,
    })
}

/// Builders for DNS messages, used by tests and by the test resolver.
pub mod build {
    use std::net::IpAddr;

    /// Encodes `name` (dot separated, no escapes) as uncompressed wire labels.
    pub fn name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// Encodes a query for `name` with type `qtype`.
    pub fn query(id: u16, name_text: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&name(name_text));
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out
    }

    /// One answer for [`response`]: a CNAME target or an address.
    pub enum AnswerData<'a> {
        Address(IpAddr),
        Cname(&'a str),
    }

    /// Encodes a response to `query` (as produced by [`query`] or received
    /// from a client) carrying `answers`, each owned by the question name via
    /// a compression pointer to offset 12, or by the previous CNAME target.
    pub fn response(query: &[u8], answers: &[AnswerData<'_>]) -> Option<Vec<u8>> {
        let question_end = super::read_name(query, 12).ok()?.1 + 4;
        let question = query.get(12..question_end)?;
        let mut out = Vec::new();
        out.extend_from_slice(query.get(0..2)?);
        out.extend_from_slice(&0x8180u16.to_be_bytes()); // QR, RD, RA
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(question);

        let mut owner_offset = 12u16;
        for answer in answers {
            out.extend_from_slice(&(0xc000 | owner_offset).to_be_bytes());
            let (rtype, rdata) = match answer {
                AnswerData::Address(IpAddr::V4(ip)) => (super::TYPE_A, ip.octets().to_vec()),
                AnswerData::Address(IpAddr::V6(ip)) => (super::TYPE_AAAA, ip.octets().to_vec()),
                AnswerData::Cname(target) => (super::TYPE_CNAME, name(target)),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&60u32.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            if rtype == super::TYPE_CNAME {
                owner_offset = out.len() as u16;
            }
            out.extend_from_slice(&rdata);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::build::{self, AnswerData};
    use super::*;
    use std::net::IpAddr;

    fn sample_response() -> Vec<u8> {
        let query = build::query(0x1234, "api.example.test", TYPE_A);
        build::response(
            &query,
            &[
                AnswerData::Cname("edge.example.test"),
                AnswerData::Address(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
                AnswerData::Address(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 4))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn response_with_cname_chain_parses() {
        let message = parse_response(&sample_response()).unwrap();
        assert_eq!(message.id, 0x1234);
        assert_eq!(message.rcode(), 0);
        assert_eq!(message.questions[0].name, "api.example.test");
        assert_eq!(message.answers.len(), 3);
        assert_eq!(message.answers[0].name, "api.example.test");
        assert_eq!(
            message.answers[0].data,
            RecordData::Cname("edge.example.test".into())
        );
        assert_eq!(message.answers[1].name, "edge.example.test");
        assert_eq!(
            message.answers[1].data,
            RecordData::A(Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(message.answers[2].ttl, 60);
    }

    #[test]
    fn aaaa_answer_parses() {
        let query = build::query(7, "v6.example.test", TYPE_AAAA);
        let ip: Ipv6Addr = "fd00::53".parse().unwrap();
        let packet = build::response(&query, &[AnswerData::Address(IpAddr::V6(ip))]).unwrap();
        let message = parse_response(&packet).unwrap();
        assert_eq!(message.answers[0].rtype, TYPE_AAAA);
        assert_eq!(message.answers[0].data, RecordData::Aaaa(ip));
    }

    #[test]
    fn query_is_rejected() {
        let query = build::query(1, "example.test", TYPE_A);
        assert_eq!(parse_response(&query), Err(DnsError::NotResponse));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let packet = sample_response();
        for len in 0..packet.len() {
            let result = parse_response(&packet[..len]);
            assert!(result.is_err(), "prefix of {len} bytes parsed: {result:?}");
        }
    }

    #[test]
    fn truncated_flag_keeps_answers_read() {
        let mut packet = sample_response();
        packet[2] |= 0x02; // TC
        let full_len = packet.len();
        let cut = &packet[..full_len - 3];
        let message = parse_response(cut).unwrap();
        assert!(message.truncated());
        assert_eq!(message.answers.len(), 2);
    }

    #[test]
    fn self_pointer_is_rejected() {
        let mut packet = build::query(1, "a", TYPE_A);
        packet[3] = 0x80;
        packet[2] = 0x80;
        // Answer count 1, answer name is a pointer to itself.
        packet[7] = 1;
        let offset = packet.len();
        packet.extend_from_slice(&[0xc0 | (offset >> 8) as u8, offset as u8]);
        packet.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert_eq!(
            parse_response(&packet),
            Err(DnsError::TooManyPointers { offset })
        );
    }

    #[test]
    fn pointer_cycle_is_rejected() {
        // Header, then at 12 a pointer to 14, at 14 a pointer to 12.
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(
            parse_response(&packet),
            Err(DnsError::TooManyPointers { offset: 12 })
        );
    }

    #[test]
    fn forward_pointer_is_followed() {
        // At 12 a pointer forward to 18, at 14 the question's type and
        // class, at 18 the name "ab".
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[0xc0, 18, 0, 1, 0, 1, 2, b'a', b'b', 0]);
        assert_eq!(read_name(&packet, 12), Ok(("ab".to_owned(), 14)));
        let message = parse_response(&packet).unwrap();
        assert_eq!(message.questions[0].name, "ab");
    }

    #[test]
    fn long_pointer_chain_is_followed() {
        // A chain of 201 pointers, more than a name has labels: each
        // two-byte pointer at offset 14 + 2k points to the one before it.
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        packet[12] = 0;
        let mut last = 12usize;
        for _ in 0..200 {
            let here = packet.len();
            packet.extend_from_slice(&[0xc0 | (last >> 8) as u8, last as u8]);
            last = here;
        }
        let question_at = packet.len();
        packet.extend_from_slice(&[0xc0 | (last >> 8) as u8, last as u8, 0, 1, 0, 1]);
        assert_eq!(
            read_name(&packet, question_at),
            Ok((".".to_owned(), question_at + 2))
        );
    }

    #[test]
    fn pointer_chain_past_half_the_message_is_capped() {
        // 60 pointers in a 140-byte message: the cap is 127 jumps, and a
        // loop through them exceeds it.
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let first = packet.len();
        for k in 0..60 {
            let next = if k == 59 { first } else { packet.len() + 2 };
            packet.extend_from_slice(&[0xc0 | (next >> 8) as u8, next as u8]);
        }
        packet.extend_from_slice(&[0; 8]);
        assert_eq!(
            read_name(&packet, first),
            Err(DnsError::TooManyPointers { offset: first })
        );
    }

    #[test]
    fn cname_with_trailing_rdata_bytes_parses() {
        let mut packet = build::query(7, "a.test", TYPE_A);
        packet[2] = 0x81;
        packet[3] = 0x80;
        packet[7] = 1;
        // Answer: pointer to the question name, CNAME, class IN, TTL 60,
        // rdata = "b.test" then two stray bytes.
        packet.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
        let target = [1, b'b', 4, b't', b'e', b's', b't', 0, 0xde, 0xad];
        packet.extend_from_slice(&(target.len() as u16).to_be_bytes());
        packet.extend_from_slice(&target);
        let message = parse_response(&packet).unwrap();
        assert_eq!(message.answers.len(), 1);
        assert_eq!(
            message.answers[0].data,
            RecordData::Cname("b.test".to_owned())
        );
    }

    #[test]
    fn name_over_255_bytes_is_rejected() {
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            packet.push(63);
            packet.extend_from_slice(&[b'a'; 63]);
        }
        packet.push(0);
        packet.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(
            parse_response(&packet),
            Err(DnsError::NameTooLong { offset: 12 })
        );
    }

    #[test]
    fn reserved_label_bits_are_rejected() {
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        assert_eq!(
            parse_response(&packet),
            Err(DnsError::ReservedLabelType {
                offset: 12,
                bits: 0x40
            })
        );
    }

    #[test]
    fn a_record_with_wrong_length_is_rejected() {
        let mut packet = build::response(
            &build::query(1, "x.test", TYPE_A),
            &[AnswerData::Address(IpAddr::V4(Ipv4Addr::LOCALHOST))],
        )
        .unwrap();
        let len = packet.len();
        packet[len - 5] = 5; // rdlength 4 -> 5
        packet.push(0);
        assert!(matches!(
            parse_response(&packet),
            Err(DnsError::BadRdataLength {
                rtype: TYPE_A,
                len: 5,
                ..
            })
        ));
    }

    #[test]
    fn answers_beyond_cap_are_counted() {
        let addresses: Vec<_> = (0..100u8)
            .map(|i| AnswerData::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))))
            .collect();
        let packet = build::response(&build::query(9, "many.test", TYPE_A), &addresses).unwrap();
        let message = parse_response(&packet).unwrap();
        assert_eq!(message.answers.len(), MAX_ANSWERS);
        assert_eq!(message.answers_dropped, 100 - MAX_ANSWERS);
    }

    #[test]
    fn label_bytes_are_escaped() {
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[4, b'a', b'.', 0x00, b'\\', 0, 0, 1, 0, 1]);
        let message = parse_response(&packet).unwrap();
        assert_eq!(message.questions[0].name, "a\\.\\000\\\\");
    }

    #[test]
    fn root_name_is_a_dot() {
        let mut packet = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[0, 0, 2, 0, 1]);
        assert_eq!(parse_response(&packet).unwrap().questions[0].name, ".");
    }
}
