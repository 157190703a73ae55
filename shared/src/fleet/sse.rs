//! Server-sent events as the fleet sends them: bytes in, whole events' `data`
//! out. Used by the streamed route (which re-frames events for the caller) and
//! by the client's assembly of non-streamed answers from a stream.

/// Splits a byte stream into SSE events; an event's `data:` lines joined by
/// newlines is its payload, events without data (comments, keep-alives) are
/// skipped.
#[derive(Debug, Default)]
pub struct SseFramer {
    buffer: Vec<u8>,
}

impl SseFramer {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// Bytes received that do not yet form a whole event.
    pub fn pending_len(&self) -> usize {
        self.buffer.len()
    }

    /// The payload of the next whole event with data, if one has arrived.
    pub fn next_data(&mut self) -> Option<String> {
        while let Some((length, separator)) = find_event_end(&self.buffer) {
            let event: Vec<u8> = self.buffer.drain(..length + separator).collect();
            let text = String::from_utf8_lossy(&event[..length]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
        }
        None
    }
}

/// Where the first complete event ends: (length of the event, length of the separator).
fn find_event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_blank_lines_of_either_style() {
        assert_eq!(find_event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(find_event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(find_event_end(b"data: a\n"), None);
    }

    #[test]
    fn payloads_come_out_whole_across_chunk_boundaries() {
        let mut framer = SseFramer::default();
        framer.push(b": keep-alive\n\ndata: {\"a\"");
        assert_eq!(framer.next_data(), None);
        framer.push(b":1}\n\ndata: line one\ndata: line two\r\n\r\ndata: [DO");
        assert_eq!(framer.next_data().as_deref(), Some("{\"a\":1}"));
        assert_eq!(framer.next_data().as_deref(), Some("line one\nline two"));
        assert_eq!(framer.next_data(), None);
        assert_eq!(framer.pending_len(), "data: [DO".len());
        framer.push(b"NE]\n\n");
        assert_eq!(framer.next_data().as_deref(), Some("[DONE]"));
    }
}
