//! A minimal Server-Sent Events reader for upstream responses.
//!
//! It splits a byte stream into events at blank lines and joins each event's `data:` lines
//! with `\n`, as the SSE specification requires. Comments and other fields are skipped, because
//! OpenAI-compatible servers carry everything in `data:`.

use std::collections::VecDeque;

use crate::Error;

/// Maximum size of one event; a larger one means a broken or hostile upstream.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Incremental SSE parser: feed it bytes, take out complete event payloads.
///
/// Lines may end with `\n` or `\r\n`, and an event ends at an empty line.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line whose end has not arrived yet.
    partial_line: Vec<u8>,
    /// The `data` of the event being read, if it has any.
    data: Option<String>,
    /// Data of events that are complete but not yet taken.
    ready: VecDeque<String>,
}

impl SseParser {
    /// Appends bytes received from the upstream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&byte| byte == b'\n') {
            self.partial_line.extend_from_slice(&rest[..newline]);
            let line = std::mem::take(&mut self.partial_line);
            self.take_line(&line);
            rest = &rest[newline + 1..];
        }
        self.partial_line.extend_from_slice(rest);

        let event_bytes = self.partial_line.len() + self.data.as_ref().map_or(0, String::len);
        if event_bytes > MAX_EVENT_BYTES {
            return Err(Error::UpstreamProtocol(format!("an event exceeds {MAX_EVENT_BYTES} bytes")));
        }
        Ok(())
    }

    /// Takes the next complete event's data; events without data are skipped.
    pub fn next_data(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    /// Takes the data of a final event that was not followed by an empty line.
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.partial_line);
        if !line.is_empty() {
            self.take_line(&line);
        }
        self.data.take()
    }

    fn take_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.ready.extend(self.data.take());
            return;
        }
        let Some(value) = line.strip_prefix(b"data:") else {
            return;
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = String::from_utf8_lossy(value);
        match &mut self.data {
            Some(joined) => {
                joined.push('\n');
                joined.push_str(&value);
            }
            None => self.data = Some(value.into_owned()),
        }
    }
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

    #[test]
    fn event_split_inside_a_line_is_reassembled() {
        let mut parser = SseParser::default();
        parser.push(b"data: {\"a\"").unwrap();
        parser.push(b":1}\n").unwrap();
        assert_eq!(parser.next_data(), None);
        parser.push(b"\ndata: [DONE]\n\n").unwrap();
        assert_eq!(parser.next_data().as_deref(), Some("{\"a\":1}"));
        assert_eq!(parser.next_data().as_deref(), Some("[DONE]"));
    }

    #[test]
    fn data_without_space_and_mixed_line_ends_are_handled() {
        let mut parser = SseParser::default();
        parser.push(b": comment\r\nevent: x\r\ndata: one\r\ndata:two\r\n\n").unwrap();
        assert_eq!(parser.next_data().as_deref(), Some("one\ntwo"));
    }
}
