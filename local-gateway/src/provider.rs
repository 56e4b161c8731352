//! The buyer side of one `/spare/infer/1` stream: send the request, then read and check the
//! provider's frames in order (`Started`, `Chunk`s, `Usage`, `Done`, or `Error`).
//!
//! Every protocol violation becomes a [`Failure`] of kind [`FailureKind::Malformed`], so the
//! caller can penalise the provider. Whether other failures count as before or after the first
//! chunk is decided by the caller, which tracks the phase.

use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use spare_gossip::infer::{MAX_REQUEST_FRAME_BYTES, MAX_RESPONSE_FRAME_BYTES, UsageReceipt};
use spare_gossip::{Api, Error as ProtocolError, ErrorCode, InferRequest, ResponseFrame, framing};

use crate::reputation::FailureKind;

/// The reason an attempt to use a provider failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The kind, as counted in the provider's reputation.
    pub kind: FailureKind,
    /// Detail for logs and for error messages to the client; never contains the prompt.
    pub message: String,
    /// The provider's error code, when it sent an `Error` frame.
    pub code: Option<ErrorCode>,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), code: None }
    }

    /// The stream ended before `Started` without an error frame: a provider whose inbound
    /// queue is full drops new streams this way, so it counts as a refusal.
    fn dropped(message: String) -> Self {
        Self { kind: FailureKind::Refused, message, code: None }
    }
}

/// A checked event from the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One upstream event payload (for OpenAI chat, a `chat.completion.chunk` JSON object).
    Chunk(Vec<u8>),
    /// The provider's signed token counts, with a verified signature.
    Usage(UsageReceipt),
    /// The response is complete.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingStarted,
    Streaming,
    AwaitingDone,
    Finished,
}

/// An open inference stream to one provider.
#[derive(Debug)]
pub struct ProviderStream<S> {
    io: S,
    request_id: String,
    public_key: [u8; 32],
    phase: Phase,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ProviderStream<S> {
    /// Writes `request` on `io`. `public_key` is the provider's offer key, which must have
    /// signed the usage receipt.
    pub async fn send(mut io: S, request: &InferRequest, public_key: [u8; 32]) -> Result<Self, Failure> {
        framing::write_frame(&mut io, request, MAX_REQUEST_FRAME_BYTES)
            .await
            .map_err(|e| Failure::dropped(format!("provider dropped the stream before reading the request: {e}")))?;
        Ok(Self { io, request_id: request.request_id.clone(), public_key, phase: Phase::AwaitingStarted })
    }

    /// Reads frames until the next event, each within `timeout`.
    ///
    /// An error frame, or a stream that ends before `Started`, is reported as
    /// [`FailureKind::Refused`]. A stream lost later is [`FailureKind::Unreachable`], and
    /// silence is [`FailureKind::Timeout`]. The caller turns them into
    /// [`FailureKind::MidStream`] once the first chunk has been relayed.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event, Failure> {
        loop {
            let frame = match tokio::time::timeout(timeout, framing::read_frame::<_, ResponseFrame>(&mut self.io, MAX_RESPONSE_FRAME_BYTES)).await {
                Err(_) => return Err(Failure::new(FailureKind::Timeout, format!("no frame within {} s", timeout.as_secs_f64()))),
                Ok(Err(e)) => return Err(self.read_failure(e)),
                Ok(Ok(frame)) => frame,
            };
            if let Some(event) = self.accept(frame)? {
                return Ok(event);
            }
        }
    }

    /// Checks a frame against the expected order; returns `None` for `Started`.
    fn accept(&mut self, frame: ResponseFrame) -> Result<Option<Event>, Failure> {
        let malformed = |message: String| Err(Failure::new(FailureKind::Malformed, message));
        let phase = self.phase;
        match (phase, frame) {
            (Phase::Finished, _) => malformed("frame after Done".into()),
            (_, ResponseFrame::Error { code, message }) => {
                self.phase = Phase::Finished;
                Err(Failure { kind: FailureKind::Refused, message: format!("provider error {code:?}: {message}"), code: Some(code) })
            }
            (Phase::AwaitingStarted, ResponseFrame::Started { api: Api::OpenAiChat }) => {
                self.phase = Phase::Streaming;
                Ok(None)
            }
            (Phase::AwaitingStarted, ResponseFrame::Started { api }) => malformed(format!("response in dialect {api:?}, but OpenAI chat was requested")),
            (Phase::AwaitingStarted, other) => malformed(format!("{} before Started", frame_name(&other))),
            (Phase::Streaming, ResponseFrame::Chunk { data }) => Ok(Some(Event::Chunk(data))),
            (Phase::Streaming, ResponseFrame::Usage(receipt)) => {
                self.check_receipt(&receipt)?;
                self.phase = Phase::AwaitingDone;
                Ok(Some(Event::Usage(receipt)))
            }
            (Phase::AwaitingDone, ResponseFrame::Done) => {
                self.phase = Phase::Finished;
                Ok(Some(Event::Done))
            }
            (_, other) => malformed(format!("{} out of order", frame_name(&other))),
        }
    }

    fn check_receipt(&self, receipt: &UsageReceipt) -> Result<(), Failure> {
        if receipt.request_id != self.request_id {
            return Err(Failure::new(FailureKind::Malformed, "usage receipt names another request"));
        }
        receipt.verify(&self.public_key).map_err(|e| Failure::new(FailureKind::Malformed, format!("usage receipt rejected: {e}")))
    }

    fn read_failure(&mut self, error: ProtocolError) -> Failure {
        let before_start = self.phase == Phase::AwaitingStarted;
        self.phase = Phase::Finished;
        match error {
            ProtocolError::FrameTooLarge { .. } | ProtocolError::Malformed(_) => Failure::new(FailureKind::Malformed, error.to_string()),
            other if before_start => Failure::dropped(format!("provider dropped the stream before Started: {other}")),
            ProtocolError::Closed => Failure::new(FailureKind::Unreachable, "provider closed the stream before Done"),
            other => Failure::new(FailureKind::Unreachable, other.to_string()),
        }
    }
}

fn frame_name(frame: &ResponseFrame) -> &'static str {
    match frame {
        ResponseFrame::Started { .. } => "Started",
        ResponseFrame::Chunk { .. } => "Chunk",
        ResponseFrame::Usage(_) => "Usage",
        ResponseFrame::Done => "Done",
        ResponseFrame::Error { .. } => "Error",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use futures::io::Cursor;
    use spare_gossip::identity::Identity;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    fn request() -> InferRequest {
        InferRequest { request_id: "req-1".into(), model: "m".into(), api: Api::OpenAiChat, body: b"{}".to_vec(), voucher: None }
    }

    /// Builds a stream whose reads return `frames` and whose writes go nowhere useful.
    async fn stream_of(frames: &[ResponseFrame], key: [u8; 32]) -> ProviderStream<Cursor<Vec<u8>>> {
        let mut bytes = Cursor::new(Vec::new());
        for frame in frames {
            framing::write_frame(&mut bytes, frame, MAX_RESPONSE_FRAME_BYTES).await.unwrap();
        }
        bytes.set_position(0);
        ProviderStream { io: bytes, request_id: "req-1".into(), public_key: key, phase: Phase::AwaitingStarted }
    }

    async fn events(stream: &mut ProviderStream<Cursor<Vec<u8>>>) -> Vec<Result<Event, Failure>> {
        let mut events = Vec::new();
        loop {
            let event = stream.next_event(TIMEOUT).await;
            let last = !matches!(event, Ok(Event::Chunk(_)) | Ok(Event::Usage(_)));
            events.push(event);
            if last {
                return events;
            }
        }
    }

    #[tokio::test]
    async fn request_is_written_as_one_frame() {
        let identity = Identity::generate().unwrap();
        let stream = ProviderStream::send(Cursor::new(Vec::new()), &request(), identity.signing_key.verifying_key().to_bytes()).await.unwrap();
        let mut written = Cursor::new(stream.io.into_inner());
        let decoded: InferRequest = framing::read_frame(&mut written, MAX_REQUEST_FRAME_BYTES).await.unwrap();
        assert_eq!(decoded, request());
    }

    #[tokio::test]
    async fn well_ordered_frames_yield_events() {
        let identity = Identity::generate().unwrap();
        let receipt = UsageReceipt::sign(&identity.signing_key, "req-1", "m", 3, 2).unwrap();
        let frames = [
            ResponseFrame::Started { api: Api::OpenAiChat },
            ResponseFrame::Chunk { data: b"{\"a\":1}".to_vec() },
            ResponseFrame::Chunk { data: b"{\"a\":2}".to_vec() },
            ResponseFrame::Usage(receipt.clone()),
            ResponseFrame::Done,
        ];
        let mut stream = stream_of(&frames, identity.signing_key.verifying_key().to_bytes()).await;

        let events = events(&mut stream).await;
        assert_eq!(
            events,
            [Ok(Event::Chunk(b"{\"a\":1}".to_vec())), Ok(Event::Chunk(b"{\"a\":2}".to_vec())), Ok(Event::Usage(receipt)), Ok(Event::Done)]
        );
    }

    #[tokio::test]
    async fn error_frame_is_a_refusal() {
        let frames = [ResponseFrame::Started { api: Api::OpenAiChat }, ResponseFrame::Error { code: ErrorCode::Busy, message: "full".into() }];
        let mut stream = stream_of(&frames, [0; 32]).await;
        let failure = stream.next_event(TIMEOUT).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Refused);
        assert_eq!(failure.code, Some(ErrorCode::Busy));
        assert!(failure.message.contains("full"), "{}", failure.message);
    }

    #[tokio::test]
    async fn out_of_order_frames_are_malformed() {
        let identity = Identity::generate().unwrap();
        let key = identity.signing_key.verifying_key().to_bytes();
        let receipt = UsageReceipt::sign(&identity.signing_key, "req-1", "m", 1, 1).unwrap();
        let started = ResponseFrame::Started { api: Api::OpenAiChat };
        let chunk = ResponseFrame::Chunk { data: b"{}".to_vec() };
        let cases: Vec<Vec<ResponseFrame>> = vec![
            vec![chunk.clone()],
            vec![started.clone(), started.clone()],
            vec![started.clone(), chunk.clone(), ResponseFrame::Done],
            vec![started.clone(), ResponseFrame::Usage(receipt.clone()), chunk.clone()],
            vec![ResponseFrame::Started { api: Api::Unknown }],
        ];
        for frames in cases {
            let mut stream = stream_of(&frames, key).await;
            let last = events(&mut stream).await.pop().unwrap();
            assert_eq!(last.as_ref().map_err(|f| f.kind), Err(FailureKind::Malformed), "{frames:?}");
        }

        let frames = [started, ResponseFrame::Usage(receipt), ResponseFrame::Done, chunk];
        let mut stream = stream_of(&frames, key).await;
        assert_eq!(events(&mut stream).await.pop().unwrap(), Ok(Event::Done));
        assert_eq!(stream.next_event(TIMEOUT).await.unwrap_err().kind, FailureKind::Malformed);
    }

    #[tokio::test]
    async fn receipt_with_bad_signature_is_malformed() {
        let provider = Identity::generate().unwrap();
        let forger = Identity::generate().unwrap();
        let forged = UsageReceipt::sign(&forger.signing_key, "req-1", "m", 1, 1).unwrap();
        let frames = [ResponseFrame::Started { api: Api::OpenAiChat }, ResponseFrame::Usage(forged)];
        let mut stream = stream_of(&frames, provider.signing_key.verifying_key().to_bytes()).await;
        assert_eq!(stream.next_event(TIMEOUT).await.unwrap_err().kind, FailureKind::Malformed);
    }

    #[tokio::test]
    async fn receipt_for_another_request_is_malformed() {
        let provider = Identity::generate().unwrap();
        let receipt = UsageReceipt::sign(&provider.signing_key, "req-2", "m", 1, 1).unwrap();
        let frames = [ResponseFrame::Started { api: Api::OpenAiChat }, ResponseFrame::Usage(receipt)];
        let mut stream = stream_of(&frames, provider.signing_key.verifying_key().to_bytes()).await;
        assert_eq!(stream.next_event(TIMEOUT).await.unwrap_err().kind, FailureKind::Malformed);
    }

    #[tokio::test]
    async fn garbage_and_truncated_streams_are_classified() {
        let mut garbage = ProviderStream { io: Cursor::new(vec![0, 0, 0, 2, 0xff, 0xff]), request_id: "r".into(), public_key: [0; 32], phase: Phase::AwaitingStarted };
        assert_eq!(garbage.next_event(TIMEOUT).await.unwrap_err().kind, FailureKind::Malformed);

        let mut oversized = ProviderStream { io: Cursor::new(u32::MAX.to_be_bytes().to_vec()), request_id: "r".into(), public_key: [0; 32], phase: Phase::AwaitingStarted };
        assert_eq!(oversized.next_event(TIMEOUT).await.unwrap_err().kind, FailureKind::Malformed);

        let mut closed = ProviderStream { io: Cursor::new(Vec::new()), request_id: "r".into(), public_key: [0; 32], phase: Phase::AwaitingStarted };
        let failure = closed.next_event(TIMEOUT).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Refused);

        let mut lost = stream_of(&[ResponseFrame::Started { api: Api::OpenAiChat }], [0; 32]).await;
        let failure = lost.next_event(TIMEOUT).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Unreachable);
    }
}
