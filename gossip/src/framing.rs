//! Length-prefixed CBOR frames: a 4-byte big-endian length, then that many bytes of CBOR.
//!
//! Every read names a maximum size, checked before any buffer is allocated, so a peer cannot
//! make us allocate more than the limit by announcing a large frame.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::{Serialize, de::DeserializeOwned};

use crate::Error;

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    Ok(bytes)
}

/// Decodes CBOR `bytes` into a `T`; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut reader = bytes;
    let value = ciborium::from_reader(&mut reader).map_err(|e| Error::Malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(Error::Malformed(format!("{} trailing bytes after CBOR value", reader.len())));
    }
    Ok(value)
}

/// Writes one frame containing `value` and flushes it.
pub async fn write_frame<W, T>(io: &mut W, value: &T, max_len: usize) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let bytes = encode(value)?;
    if bytes.len() > max_len {
        return Err(Error::FrameTooLarge { len: bytes.len(), max: max_len });
    }
    let len = u32::try_from(bytes.len()).map_err(|_| Error::FrameTooLarge { len: bytes.len(), max: max_len })?;

    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame and decodes it, rejecting frames longer than `max_len`.
///
/// Returns [`Error::Closed`] when the stream ends cleanly before the first length byte.
pub async fn read_frame<R, T>(io: &mut R, max_len: usize) -> Result<T, Error>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len_bytes = [0u8; 4];
    let mut filled = 0;
    while filled < len_bytes.len() {
        let n = io.read(&mut len_bytes[filled..]).await?;
        if n == 0 {
            return Err(if filled == 0 { Error::Closed } else { Error::Malformed("stream ended inside a frame length".into()) });
        }
        filled += n;
    }

    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max_len {
        return Err(Error::FrameTooLarge { len, max: max_len });
    }
    let mut bytes = vec![0u8; len];
    io.read_exact(&mut bytes).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Malformed(format!("stream ended inside a frame of {len} bytes")),
        _ => Error::Io(e),
    })?;
    decode(&bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frame_round_trips() {
        let mut buf = Cursor::new(Vec::new());
        write_frame(&mut buf, &("hello", 7u32), 1024).await.unwrap();
        buf.set_position(0);
        let value: (String, u32) = read_frame(&mut buf, 1024).await.unwrap();
        assert_eq!(value, ("hello".to_string(), 7));
    }

    #[tokio::test]
    async fn oversized_length_is_rejected_before_reading() {
        let mut bytes = (u32::MAX).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        let result: Result<String, _> = read_frame(&mut Cursor::new(bytes), 1024).await;
        assert!(matches!(result, Err(Error::FrameTooLarge { len, max: 1024 }) if len == u32::MAX as usize));
    }

    #[tokio::test]
    async fn truncated_frame_is_malformed() {
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let result: Result<String, _> = read_frame(&mut Cursor::new(bytes), 1024).await;
        assert!(matches!(result, Err(Error::Malformed(_))));
    }

    #[tokio::test]
    async fn garbage_payload_is_malformed() {
        let mut bytes = 3u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        let result: Result<String, _> = read_frame(&mut Cursor::new(bytes), 1024).await;
        assert!(matches!(result, Err(Error::Malformed(_))));
    }

    #[tokio::test]
    async fn empty_stream_reports_closed() {
        let result: Result<String, _> = read_frame(&mut Cursor::new(Vec::new()), 1024).await;
        assert!(matches!(result, Err(Error::Closed)));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&1u8).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u8>(&bytes), Err(Error::Malformed(_))));
    }
}
