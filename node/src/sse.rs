//! A minimal Server-Sent Events reader for upstream responses.
//!
//! It splits a byte stream into events at blank lines and joins each event's `data:` lines
//! with `\n`, as the SSE specification says. Comments and other fields are skipped, because
//! OpenAI-compatible servers carry everything in `data:`.

use bytes::{Buf, BytesMut};

use crate::Error;

/// Maximum size of one event; a larger one means a broken or hostile upstream.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Incremental SSE parser: feed it bytes, take out complete event payloads.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: BytesMut,
}

impl SseParser {
    /// Appends bytes received from the upstream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() > MAX_EVENT_BYTES && find_event_end(&self.buffer).is_none() {
            return Err(Error::UpstreamProtocol(format!("an event exceeds {MAX_EVENT_BYTES} bytes")));
        }
        Ok(())
    }

    /// Takes the next complete event's data, skipping events that carry no data.
    pub fn next_data(&mut self) -> Option<String> {
        while let Some((end, separator_len)) = find_event_end(&self.buffer) {
            let event = self.buffer.split_to(end);
            self.buffer.advance(separator_len);
            if let Some(data) = data_of(&event) {
                return Some(data);
            }
        }
        None
    }

    /// Takes the data of a final event that was not followed by a blank line.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        data_of(&rest)
    }
}

/// Finds the end of the first event and the length of the blank-line separator after it.
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buffer.len() {
        if buffer[i] == b'\n' && buffer[i + 1] == b'\n' {
            return Some((i, 2));
        }
        if buffer[i..].starts_with(b"\r\n\r\n") {
            return Some((i, 4));
        }
        i += 1;
    }
    None
}

fn data_of(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let mut data: Option<String> = None;
    for line in text.lines() {
        let Some(value) = line.strip_prefix("data:") else {
            continue;
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut data {
            Some(joined) => {
                joined.push('\n');
                joined.push_str(value);
            }
            None => data = Some(value.to_owned()),
        }
    }
    data
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pushes_are_reassembled() {
        let mut parser = SseParser::default();
        parser.push(b"data: {\"a\":").unwrap();
        assert_eq!(parser.next_data(), None);
        parser.push(b"1}\n\ndata: [DONE]\n\n").unwrap();
        assert_eq!(parser.next_data().as_deref(), Some("{\"a\":1}"));
        assert_eq!(parser.next_data().as_deref(), Some("[DONE]"));
        assert_eq!(parser.next_data(), None);
    }

    #[test]
    fn comments_and_crlf_are_handled() {
        let mut parser = SseParser::default();
        parser.push(b": keep-alive\n\nevent: x\r\ndata: one\r\ndata: two\r\n\r\n").unwrap();
        assert_eq!(parser.next_data().as_deref(), Some("one\ntwo"));
    }

    #[test]
    fn trailing_event_without_blank_line_is_kept() {
        let mut parser = SseParser::default();
        parser.push(b"data: last").unwrap();
        assert_eq!(parser.next_data(), None);
        assert_eq!(parser.finish().as_deref(), Some("last"));
    }

    #[test]
    fn oversized_event_is_rejected() {
        let mut parser = SseParser::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert!(parser.push(&big).is_err());
    }
}
