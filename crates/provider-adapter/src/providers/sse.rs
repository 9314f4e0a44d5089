//! A server-sent events parser (the WHATWG event-stream format) over an HTTP body, incremental:
//! bytes go in as they arrive, complete events come out. Used by the OpenAI, Anthropic and
//! Gemini streams; `event:` names, multi-line `data:`, comments and CRLF are handled.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio_stream::Stream;

use super::{EventStream, ProviderError, ProviderResult, StreamEvent};
use crate::catalog::ProviderEntry;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; empty means the default `message`.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buffer: BytesMut,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes and returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line = self.buffer.split_to(end + 1);
            let mut line = &line[..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line);
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        events
    }

    /// Whether bytes of an unfinished event are pending (a stream cut in the middle).
    pub fn has_partial(&self) -> bool {
        !self.buffer.is_empty() || self.has_data
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if !self.has_data {
                self.event.clear();
                return None;
            }
            self.has_data = false;
            return Some(SseEvent {
                event: std::mem::take(&mut self.event),
                data: std::mem::take(&mut self.data),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// What one upstream event means for the stream.
#[derive(Debug)]
pub enum SseStep {
    Events(Vec<StreamEvent>),
    /// The upstream's end marker (`[DONE]`, `message_stop`, Gemini's last chunk): anything after
    /// it is ignored, and a body that ends before it is a truncated stream.
    Done(Vec<StreamEvent>),
}

type Mapper = Box<dyn FnMut(&SseEvent) -> ProviderResult<SseStep> + Send>;

/// The events of an SSE response, translated by `map`. A body that ends before `map` said
/// [`SseStep::Done`] ends the stream with a `malformed_response` error.
pub fn event_stream(
    response: reqwest::Response,
    provider: Arc<ProviderEntry>,
    map: impl FnMut(&SseEvent) -> ProviderResult<SseStep> + Send + 'static,
) -> EventStream {
    Box::pin(SseStream {
        body: Box::pin(response.bytes_stream()),
        parser: SseParser::new(),
        pending: VecDeque::new(),
        map: Box::new(map),
        provider,
        finished: false,
    })
}

struct SseStream {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    parser: SseParser,
    pending: VecDeque<ProviderResult<StreamEvent>>,
    map: Mapper,
    provider: Arc<ProviderEntry>,
    finished: bool,
}

impl Stream for SseStream {
    type Item = ProviderResult<StreamEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    for event in this.parser.push(&chunk) {
                        match (this.map)(&event) {
                            Ok(SseStep::Events(events)) => {
                                this.pending.extend(events.into_iter().map(Ok));
                            }
                            Ok(SseStep::Done(events)) => {
                                this.pending.extend(events.into_iter().map(Ok));
                                this.finished = true;
                                break;
                            }
                            Err(error) => {
                                this.pending.push_back(Err(error));
                                this.finished = true;
                                break;
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.finished = true;
                    this.pending
                        .push_back(Err(ProviderError::from_reqwest(&error, &this.provider)));
                }
                Poll::Ready(None) => {
                    this.finished = true;
                    this.pending.push_back(Err(ProviderError::malformed(
                        "the stream ended before its end event (truncated)",
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_lines() {
        let mut parser = SseParser::new();
        assert!(
            parser
                .push(b"event: message_start\r\ndata: {\"a\"")
                .is_empty()
        );
        let events = parser.push(b":1}\r\n\r\n: keep-alive\n\ndata: x\ndata: y\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "message_start".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "x\ny".into()
                },
            ]
        );
        assert!(!parser.has_partial());
        parser.push(b"data: cut");
        assert!(parser.has_partial());
    }
}
