//! The script of a [`ScriptedUpstream`](crate::ScriptedUpstream): the models it lists, the
//! text and timing of its stream, an optional tool call, and its failure mode.

use std::time::Duration;

/// The scripted behaviour of one upstream server.
///
/// Every response streams `chunks` content deltas. Chunk `i` carries the text `"tok{i} "`
/// unless [`Script::with_chunk_texts`] sets other texts. The first content delta is sent
/// `time_to_first_token` after the request arrives, and each later one `gap` after the one
/// before it, measured from that first deadline so that timer slack does not accumulate.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Model ids listed by `GET /v1/models` and accepted by `POST /v1/chat/completions`.
    pub models: Vec<String>,
    /// Number of content deltas in each response, which is also the reported `completion_tokens`.
    pub chunks: usize,
    /// Delay from receiving the request to sending the first content delta.
    pub time_to_first_token: Duration,
    /// Delay between two consecutive content deltas.
    pub gap: Duration,
    /// Value reported as `usage.prompt_tokens`, whatever the prompt.
    pub prompt_tokens: u64,
    /// Texts of the content deltas; `None` means the default `"tok{i} "`.
    pub chunk_texts: Option<Vec<String>>,
    /// Tool call sent instead of text when the request carries a non-empty `tools` array.
    pub tool_call: Option<ToolCallScript>,
    /// The failure the server plays, or [`FailureMode::Normal`].
    pub mode: FailureMode,
    /// Whether request bodies and headers are kept for
    /// [`ScriptedUpstream::requests`](crate::ScriptedUpstream::requests). Long-running
    /// servers turn this off, because the record grows with every request.
    pub record_requests: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            models: vec![DEFAULT_MODEL.to_owned()],
            chunks: 4,
            time_to_first_token: Duration::ZERO,
            gap: Duration::ZERO,
            prompt_tokens: 8,
            chunk_texts: None,
            tool_call: None,
            mode: FailureMode::Normal,
            record_requests: true,
        }
    }
}

/// Model id served by [`Script::default`].
pub const DEFAULT_MODEL: &str = "scripted-model";

impl Script {
    /// Creates a script serving one model with the default stream of four instant chunks.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            models: vec![model.into()],
            ..Self::default()
        }
    }

    /// Adds a model id to the served list.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.models.push(model.into());
        self
    }

    /// Sets the number of content deltas per response.
    pub fn with_chunks(mut self, chunks: usize) -> Self {
        self.chunks = chunks;
        self
    }

    /// Sets the delay before the first content delta.
    pub fn with_time_to_first_token(mut self, delay: Duration) -> Self {
        self.time_to_first_token = delay;
        self
    }

    /// Sets the delay between consecutive content deltas.
    pub fn with_gap(mut self, gap: Duration) -> Self {
        self.gap = gap;
        self
    }

    /// Sets the reported `usage.prompt_tokens`.
    pub fn with_prompt_tokens(mut self, prompt_tokens: u64) -> Self {
        self.prompt_tokens = prompt_tokens;
        self
    }

    /// Replaces the generated `"tok{i} "` texts; the chunk count becomes `texts.len()`.
    pub fn with_chunk_texts<I, S>(mut self, texts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let texts: Vec<String> = texts.into_iter().map(Into::into).collect();
        self.chunks = texts.len();
        self.chunk_texts = Some(texts);
        self
    }

    /// Sends this tool call in response to requests that carry `tools`.
    pub fn with_tool_call(mut self, tool_call: ToolCallScript) -> Self {
        self.tool_call = Some(tool_call);
        self
    }

    /// Sets the failure mode.
    pub fn with_mode(mut self, mode: FailureMode) -> Self {
        self.mode = mode;
        self
    }

    /// Turns the per-request record on or off; request counters keep counting either way.
    pub fn with_request_recording(mut self, record_requests: bool) -> Self {
        self.record_requests = record_requests;
        self
    }

    /// Returns the text of content delta `index`.
    pub fn chunk_text(&self, index: usize) -> String {
        match &self.chunk_texts {
            Some(texts) => texts.get(index).cloned().unwrap_or_default(),
            None => format!("tok{index} "),
        }
    }

    /// Returns the whole response text, the concatenation of every content delta.
    pub fn full_text(&self) -> String {
        (0..self.chunks)
            .map(|index| self.chunk_text(index))
            .collect()
    }

    /// Returns whether `model` is one of the served model ids.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|served| served == model)
    }
}

/// A function call sent in place of text, streamed as OpenAI streams `tool_calls`: a first
/// delta with the index, id, type and function name, then the arguments in fragments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallScript {
    /// The `tool_calls[].id` value.
    pub id: String,
    /// The function name.
    pub name: String,
    /// The complete arguments string (JSON text, as OpenAI sends it).
    pub arguments: String,
    /// Maximum number of characters per argument fragment; at least 1.
    pub fragment_chars: usize,
}

impl ToolCallScript {
    /// Creates a tool call with id `call_scripted_0` and 8-character argument fragments.
    pub fn new(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self {
            id: "call_scripted_0".to_owned(),
            name: name.into(),
            arguments: arguments.into(),
            fragment_chars: 8,
        }
    }

    /// Sets the maximum fragment length in characters; 0 is treated as 1.
    pub fn with_fragment_chars(mut self, fragment_chars: usize) -> Self {
        self.fragment_chars = fragment_chars.max(1);
        self
    }

    /// Splits the arguments into the fragments sent one per delta, on character boundaries.
    pub fn argument_fragments(&self) -> Vec<String> {
        let characters: Vec<char> = self.arguments.chars().collect();
        characters
            .chunks(self.fragment_chars.max(1))
            .map(|fragment| fragment.iter().collect())
            .collect()
    }
}

/// A scripted server failure. Content-delta counts exclude the first delta, which carries
/// only the role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Responds as scripted.
    Normal,
    /// Responds to every chat completion with this HTTP status and an OpenAI error body.
    HttpStatus(u16),
    /// Accepts the request and never sends a status line.
    HangBeforeResponse,
    /// Sends status 200 and headers, then never sends a byte of body.
    HangBeforeFirstChunk,
    /// Sends this many content deltas, then drops the connection without finishing the
    /// body. A non-streaming response sends part of its JSON and is dropped the same way.
    CloseAfterChunks(usize),
    /// Sends this many content deltas, then an event whose `data` is not valid JSON, then
    /// `data: [DONE]`. A non-streaming response is a 200 whose body is not valid JSON.
    MalformedSseAfterChunks(usize),
}
