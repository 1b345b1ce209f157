//! Frames: a 4-byte big-endian body length, the request ids the frame is about (8-byte
//! first id, 4-byte count; zero for frames about no request), then that many bytes of JSON.
//!
//! The ids travel outside the JSON so a frame whose body cannot be decoded still says whose
//! it is: the receiver fails those requests alone and goes on reading. Only a broken stream
//! (end of file or an I/O error mid-frame) ends a connection.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Larger frames are refused: no message of ours comes near this (the largest: five 10 MiB
/// images inline as base64, where shared memory is unavailable, ~67 MB).
pub const MAX_FRAME_BYTES: usize = 80 << 20;

const HEADER_BYTES: usize = 16;

/// The requests a message is about: sequence ids `first .. first + count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameIds {
    pub first: u64,
    pub count: u32,
}

impl FrameIds {
    pub const NONE: FrameIds = FrameIds { first: 0, count: 0 };

    pub fn one(id: u64) -> FrameIds {
        FrameIds {
            first: id,
            count: 1,
        }
    }

    pub fn iter(self) -> impl Iterator<Item = u64> {
        (0..u64::from(self.count)).map(move |i| self.first + i)
    }
}

/// A message that can say which requests it is about.
pub trait Framed {
    fn frame_ids(&self) -> FrameIds;
}

/// One frame read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<T> {
    Message(T),
    /// The body could not be decoded (or was too large and was skipped): the requests it
    /// was about should fail; the stream itself is fine.
    Unreadable {
        ids: FrameIds,
        error: String,
    },
}

/// A message as one frame's bytes.
pub fn encode_frame<T: Serialize + Framed>(message: &T) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; HEADER_BYTES];
    serde_json::to_writer(&mut frame, message).map_err(io::Error::other)?;
    let len = frame.len() - HEADER_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
        ));
    }
    let ids = message.frame_ids();
    frame[0..4].copy_from_slice(&(len as u32).to_be_bytes());
    frame[4..12].copy_from_slice(&ids.first.to_be_bytes());
    frame[12..16].copy_from_slice(&ids.count.to_be_bytes());
    Ok(frame)
}

fn parse_header(header: [u8; HEADER_BYTES]) -> (usize, FrameIds) {
    let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let first = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
    (len, FrameIds { first, count })
}

fn decode<T: DeserializeOwned>(ids: FrameIds, body: &[u8]) -> Incoming<T> {
    match serde_json::from_slice(body) {
        Ok(message) => Incoming::Message(message),
        Err(e) => Incoming::Unreadable {
            ids,
            error: e.to_string(),
        },
    }
}

fn too_large<T>(ids: FrameIds, len: usize) -> Incoming<T> {
    Incoming::Unreadable {
        ids,
        error: format!("frame of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
    }
}

pub fn write_frame<W: Write, T: Serialize + Framed>(writer: &mut W, message: &T) -> io::Result<()> {
    writer.write_all(&encode_frame(message)?)?;
    writer.flush()
}

/// `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read, T: DeserializeOwned>(reader: &mut R) -> io::Result<Option<Incoming<T>>> {
    let mut header = [0u8; HEADER_BYTES];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (len, ids) = parse_header(header);
    if len > MAX_FRAME_BYTES {
        let skipped = io::copy(&mut reader.take(len as u64), &mut io::sink())?;
        if skipped < len as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(Some(too_large(ids, len)));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(Some(decode(ids, &body)))
}

pub async fn write_frame_async<W: AsyncWrite + Unpin, T: Serialize + Framed>(
    writer: &mut W,
    message: &T,
) -> io::Result<()> {
    writer.write_all(&encode_frame(message)?).await?;
    writer.flush().await
}

/// `Ok(None)` at a clean end of stream.
pub async fn read_frame_async<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> io::Result<Option<Incoming<T>>> {
    let mut header = [0u8; HEADER_BYTES];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let (len, ids) = parse_header(header);
    if len > MAX_FRAME_BYTES {
        let skipped = tokio::io::copy(&mut reader.take(len as u64), &mut tokio::io::sink()).await?;
        if skipped < len as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(Some(too_large(ids, len)));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(decode(ids, &body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FromWorker, ToWorker};

    fn message<T>(incoming: Option<Incoming<T>>) -> Option<T> {
        match incoming {
            Some(Incoming::Message(m)) => Some(m),
            Some(Incoming::Unreadable { error, .. }) => panic!("unreadable: {error}"),
            None => None,
        }
    }

    #[test]
    fn sync_round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToWorker::Cancel { id: 7 }).unwrap();
        write_frame(&mut buf, &ToWorker::Ping { nonce: 1 }).unwrap();
        let mut reader = buf.as_slice();
        assert_eq!(
            message(read_frame::<_, ToWorker>(&mut reader).unwrap()),
            Some(ToWorker::Cancel { id: 7 })
        );
        assert_eq!(
            message(read_frame::<_, ToWorker>(&mut reader).unwrap()),
            Some(ToWorker::Ping { nonce: 1 })
        );
        assert_eq!(
            message(read_frame::<_, ToWorker>(&mut reader).unwrap()),
            None
        );
    }

    #[test]
    fn an_undecodable_body_names_its_requests_and_the_stream_goes_on() {
        let mut buf = Vec::new();
        let garbage = b"{\"Generate\": nonsense";
        buf.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
        buf.extend_from_slice(&40u64.to_be_bytes());
        buf.extend_from_slice(&3u32.to_be_bytes());
        buf.extend_from_slice(garbage);
        write_frame(&mut buf, &ToWorker::Ping { nonce: 9 }).unwrap();
        let mut reader = buf.as_slice();
        match read_frame::<_, ToWorker>(&mut reader).unwrap() {
            Some(Incoming::Unreadable { ids, .. }) => {
                assert_eq!(ids.iter().collect::<Vec<_>>(), [40, 41, 42])
            }
            other => panic!("expected an unreadable frame, got {other:?}"),
        }
        assert_eq!(
            message(read_frame::<_, ToWorker>(&mut reader).unwrap()),
            Some(ToWorker::Ping { nonce: 9 })
        );
    }

    #[test]
    fn oversized_frames_are_skipped_and_truncated_ones_are_errors() {
        // Over the limit but complete: skipped, reported, and the next frame reads.
        let mut buf = Vec::new();
        let len = MAX_FRAME_BYTES + 1;
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        buf.extend_from_slice(&5u64.to_be_bytes());
        buf.extend_from_slice(&1u32.to_be_bytes());
        buf.resize(buf.len() + len, b' ');
        write_frame(&mut buf, &ToWorker::Ping { nonce: 2 }).unwrap();
        let mut reader = buf.as_slice();
        assert!(matches!(
            read_frame::<_, ToWorker>(&mut reader).unwrap(),
            Some(Incoming::Unreadable {
                ids: FrameIds { first: 5, count: 1 },
                ..
            })
        ));
        assert_eq!(
            message(read_frame::<_, ToWorker>(&mut reader).unwrap()),
            Some(ToWorker::Ping { nonce: 2 })
        );
        // A header promising more than the stream holds is a broken stream.
        let mut reader: &[u8] = &[0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'x'];
        assert!(read_frame::<_, ToWorker>(&mut reader).is_err());
    }

    #[tokio::test]
    async fn async_and_sync_agree() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let message_out = FromWorker::Accepted {
            id: 3,
            prompt_tokens: 12,
        };
        write_frame_async(&mut a, &message_out).await.unwrap();
        drop(a);
        assert_eq!(
            message(read_frame_async::<_, FromWorker>(&mut b).await.unwrap()),
            Some(message_out)
        );
        assert_eq!(
            message(read_frame_async::<_, FromWorker>(&mut b).await.unwrap()),
            None
        );
    }
}
