//! Images on their way to a worker: in a sealed memfd whose descriptor travels beside the
//! frame (`SCM_RIGHTS`), or — where shared memory is unavailable — inline in the frame as
//! base64, as the seed did. Nothing is written to disk either way.
//!
//! Descriptors are attached to the first byte of the frame that names them, so the reader
//! holds them (in arrival order) before it has the whole frame; a frame takes its own from
//! the front of that queue, each recognised by the key in its memfd's name (a frame that
//! could not be read leaves its descriptors behind: the next frame skips them).

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use serde::{Deserialize, Serialize};

/// Descriptors one read may bring: a request's images arrive in one frame.
pub const MAX_FDS_PER_READ: usize = 16;

/// One image's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MediaBytes {
    /// `len` bytes in a sealed memfd named after `key`, passed beside the frame; `fd` is
    /// set on both ends (the sender's copy; the receiver's, taken from its queue).
    Shared {
        len: u64,
        key: u64,
        #[serde(skip)]
        fd: Option<Arc<OwnedFd>>,
    },
    /// Base64 in the frame.
    Inline(String),
}

impl PartialEq for MediaBytes {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (MediaBytes::Shared { len: a, .. }, MediaBytes::Shared { len: b, .. }) => a == b,
            (MediaBytes::Inline(a), MediaBytes::Inline(b)) => a == b,
            _ => false,
        }
    }
}

impl MediaBytes {
    /// The bytes in a sealed memfd (fails where the kernel has no memfd or sealing).
    pub fn shared(bytes: &[u8]) -> std::io::Result<MediaBytes> {
        static KEYS: AtomicU64 = AtomicU64::new(1);
        let key = KEYS.fetch_add(1, Ordering::Relaxed);
        let fd = sealed_memfd(bytes, key)?;
        Ok(MediaBytes::Shared {
            len: bytes.len() as u64,
            key,
            fd: Some(Arc::new(fd)),
        })
    }

    /// The bytes in the frame.
    pub fn inline(bytes: &[u8]) -> MediaBytes {
        MediaBytes::Inline(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, MediaBytes::Shared { .. })
    }

    /// The bytes (the receiver's side).
    pub fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            MediaBytes::Inline(text) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| format!("an inline image is not base64: {e}")),
            MediaBytes::Shared { len, fd, .. } => {
                let fd = fd
                    .as_ref()
                    .ok_or("an image's shared memory did not arrive")?;
                let file = std::fs::File::from(
                    fd.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?,
                );
                let size = file.metadata().map_err(|e| e.to_string())?.len();
                // Sealed by the sender: its size cannot change under us.
                if size != *len {
                    return Err(format!(
                        "an image's shared memory holds {size} bytes, not {len}"
                    ));
                }
                let mut bytes = vec![0; *len as usize];
                file.read_exact_at(&mut bytes, 0)
                    .map_err(|e| format!("reading an image's shared memory: {e}"))?;
                Ok(bytes)
            }
        }
    }
}

/// A memfd holding `bytes`, sealed against any change (the receiver can trust its size and
/// contents; the sender cannot alter them after the check).
fn sealed_memfd(bytes: &[u8], key: u64) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        memfd_name(key).as_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let file = std::fs::File::from(fd);
    file.write_all_at(bytes, 0)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(OwnedFd::from(file))
}

fn memfd_name(key: u64) -> String {
    format!("hearth-image-{key}")
}

/// Whether a received descriptor is the memfd named after `key` (the kernel shows it as
/// `/memfd:<name> (deleted)`).
fn is_memfd_for(fd: &OwnedFd, key: u64) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).is_ok_and(|target| {
        target.to_string_lossy() == format!("/memfd:{} (deleted)", memfd_name(key))
    })
}

/// Something a prompt keeps alive for as long as it lives (the orchestrator's share of an
/// image memory budget, released when the request and any retry of it are done). Never
/// sent; equal to any other.
#[derive(Clone, Default)]
pub struct Keep(pub Option<Arc<dyn std::any::Any + Send + Sync>>);

impl std::fmt::Debug for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keep")
    }
}

impl PartialEq for Keep {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Descriptors received and not yet claimed by a frame, in arrival order.
pub type FdQueue = Arc<Mutex<VecDeque<OwnedFd>>>;

/// Give each shared image of `media` its descriptor from the front of `queue`; descriptors
/// before it that belong to no frame read (one that could not be read) are closed.
pub fn claim_fds(media: &mut [MediaBytes], queue: &FdQueue) -> Result<(), String> {
    let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
    for item in media {
        if let MediaBytes::Shared { fd, key, .. } = item {
            loop {
                let received = queue
                    .pop_front()
                    .ok_or("an image's shared memory did not arrive with its request")?;
                if is_memfd_for(&received, *key) {
                    *fd = Some(Arc::new(received));
                    break;
                }
            }
        }
    }
    Ok(())
}

/// The sender's descriptors of `media`, in order.
pub fn media_fds(media: &[MediaBytes]) -> Vec<BorrowedFd<'_>> {
    media
        .iter()
        .filter_map(|m| match m {
            MediaBytes::Shared { fd: Some(fd), .. } => Some(fd.as_fd()),
            _ => None,
        })
        .collect()
}

/// Send the first bytes of `bytes` with `fds` attached (at least one byte; returns how many
/// went). The caller writes the rest as usual.
pub fn send_with_fds(
    socket: RawFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<usize> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let control = [ControlMessage::ScmRights(&raw)];
    sendmsg::<UnixAddr>(
        socket,
        &[IoSlice::new(bytes)],
        &control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(std::io::Error::from)
}

/// A Unix stream read with `recvmsg`, keeping descriptors that arrive in a queue.
pub struct FdReceiver {
    stream: UnixStream,
    queue: FdQueue,
    control: Vec<u8>,
}

impl FdReceiver {
    pub fn new(stream: UnixStream) -> FdReceiver {
        FdReceiver {
            stream,
            queue: FdQueue::default(),
            control: nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]),
        }
    }

    pub fn queue(&self) -> FdQueue {
        self.queue.clone()
    }
}

impl Read for FdReceiver {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut iov = [IoSliceMut::new(buf)];
        let message = loop {
            match recvmsg::<UnixAddr>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut self.control),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other.map_err(std::io::Error::from)?,
            }
        };
        let received = message.bytes;
        let truncated = message.flags.contains(MsgFlags::MSG_CTRUNC);
        let mut fds = Vec::new();
        if let Ok(cmsgs) = message.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: the kernel just installed these descriptors in this process
                    // for us; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        if truncated {
            // More descriptors than we make room for: the orchestrator never sends that
            // many, so the stream can no longer be trusted.
            return Err(std::io::Error::other("too many descriptors in one message"));
        }
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(fds);
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn shared_and_inline_images_arrive_whole_and_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let images = [vec![1u8; 100_000], vec![2u8; 10], vec![3u8; 5]];
        let mut media: Vec<MediaBytes> = vec![
            MediaBytes::shared(&images[0]).unwrap(),
            MediaBytes::inline(&images[1]),
            MediaBytes::shared(&images[2]).unwrap(),
        ];
        assert!(media[0].is_shared() && !media[1].is_shared() && media[2].is_shared());
        let frame = serde_json::to_vec(&media).unwrap();
        let fds = media_fds(&media);
        assert_eq!(fds.len(), 2);
        let sent = send_with_fds(a.as_raw_fd(), &frame, &fds).unwrap();
        (&a).write_all(&frame[sent..]).unwrap();
        drop(a);
        let mut receiver = FdReceiver::new(b);
        let queue = receiver.queue();
        let mut got = Vec::new();
        receiver.read_to_end(&mut got).unwrap();
        assert_eq!(got, frame);
        let mut arrived: Vec<MediaBytes> = serde_json::from_slice(&got).unwrap();
        claim_fds(&mut arrived, &queue).unwrap();
        for (item, original) in arrived.iter().zip(&images) {
            assert_eq!(&item.read().unwrap(), original);
        }
        // Sealed: the receiver cannot grow or write it.
        if let MediaBytes::Shared { fd: Some(fd), .. } = &arrived[0] {
            let file = std::fs::File::from(fd.as_fd().try_clone_to_owned().unwrap());
            assert!(file.set_len(1).is_err());
            assert!(file.write_all_at(b"x", 0).is_err());
        }
        media.clear();
    }

    #[test]
    fn a_frame_without_its_descriptor_fails_clearly() {
        let mut media = vec![MediaBytes::Shared {
            len: 3,
            key: 0,
            fd: None,
        }];
        let err = claim_fds(&mut media, &FdQueue::default()).unwrap_err();
        assert!(err.contains("did not arrive"));
        assert!(media[0].read().is_err());
    }

    #[test]
    fn descriptors_left_by_an_unreadable_frame_are_skipped() {
        let stale = MediaBytes::shared(b"old").unwrap();
        let wanted = MediaBytes::shared(b"new").unwrap();
        let queue = FdQueue::default();
        for item in [&stale, &wanted] {
            if let MediaBytes::Shared { fd: Some(fd), .. } = item {
                queue
                    .lock()
                    .unwrap()
                    .push_back(fd.as_fd().try_clone_to_owned().unwrap());
            }
        }
        let mut arrived = vec![wanted.clone()];
        if let MediaBytes::Shared { fd, .. } = &mut arrived[0] {
            *fd = None;
        }
        claim_fds(&mut arrived, &queue).unwrap();
        assert_eq!(arrived[0].read().unwrap(), b"new");
        assert!(queue.lock().unwrap().is_empty());
    }
}
