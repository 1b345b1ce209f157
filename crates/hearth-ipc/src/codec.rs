//! Frames: a 4-byte big-endian length, then that many bytes of JSON.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Larger frames are refused: no message of ours comes near this.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

fn encode<T: Serialize>(message: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn check_len(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    Ok(len)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, message: &T) -> io::Result<()> {
    writer.write_all(&encode(message)?)?;
    writer.flush()
}

/// `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read, T: DeserializeOwned>(reader: &mut R) -> io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; check_len(header)?];
    reader.read_exact(&mut body)?;
    decode(&body).map(Some)
}

pub async fn write_frame_async<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
) -> io::Result<()> {
    writer.write_all(&encode(message)?).await?;
    writer.flush().await
}

/// `Ok(None)` at a clean end of stream.
pub async fn read_frame_async<R: AsyncRead + Unpin, T: DeserializeOwned>(
    reader: &mut R,
) -> io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; check_len(header)?];
    reader.read_exact(&mut body).await?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FromWorker, ToWorker};

    #[test]
    fn sync_round_trip_and_clean_eof() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &ToWorker::Cancel { id: 7 }).unwrap();
        write_frame(&mut buf, &ToWorker::Ping { nonce: 1 }).unwrap();
        let mut reader = buf.as_slice();
        assert_eq!(
            read_frame::<_, ToWorker>(&mut reader).unwrap(),
            Some(ToWorker::Cancel { id: 7 })
        );
        assert_eq!(
            read_frame::<_, ToWorker>(&mut reader).unwrap(),
            Some(ToWorker::Ping { nonce: 1 })
        );
        assert_eq!(read_frame::<_, ToWorker>(&mut reader).unwrap(), None);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut reader: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_frame::<_, ToWorker>(&mut reader).is_err());
        let mut reader: &[u8] = &[0, 0, 0, 3, b'x', b'y', b'z'];
        assert!(read_frame::<_, ToWorker>(&mut reader).is_err());
    }

    #[tokio::test]
    async fn async_and_sync_agree() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let message = FromWorker::Accepted {
            id: 3,
            prompt_tokens: 12,
        };
        write_frame_async(&mut a, &message).await.unwrap();
        drop(a);
        assert_eq!(
            read_frame_async::<_, FromWorker>(&mut b).await.unwrap(),
            Some(message)
        );
        assert_eq!(
            read_frame_async::<_, FromWorker>(&mut b).await.unwrap(),
            None
        );
    }
}
