//! Stored responses of the Responses API: what `previous_response_id` continues and
//! `GET /v1/responses/{id}` returns. In memory only, bounded by count and bytes, the least
//! recently used out — a restart or a busy server forgets, and a follow-up naming a
//! forgotten response gets a 400 saying so.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;

/// At most this many responses are kept…
pub const MAX_RESPONSES: usize = 1000;
/// …and at most this many bytes of them (serialized response and conversation).
pub const MAX_BYTES: usize = 64 << 20;

#[derive(Clone)]
pub struct Stored {
    pub response: Value,
    /// The whole conversation as chat messages, the response's own turn last.
    pub conversation: Vec<Value>,
}

pub struct ResponseStore {
    inner: Mutex<Inner>,
    max_responses: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Stored, usize)>,
    /// Least recently used first.
    order: VecDeque<String>,
    bytes: usize,
}

impl Default for ResponseStore {
    fn default() -> Self {
        ResponseStore::new(MAX_RESPONSES, MAX_BYTES)
    }
}

impl ResponseStore {
    pub fn new(max_responses: usize, max_bytes: usize) -> Self {
        ResponseStore {
            inner: Mutex::default(),
            max_responses,
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep a response (one larger than the whole store is not kept).
    pub fn insert(&self, id: &str, stored: Stored) {
        let bytes = stored.response.to_string().len()
            + stored
                .conversation
                .iter()
                .map(|m| m.to_string().len())
                .sum::<usize>();
        if bytes > self.max_bytes || self.max_responses == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.remove(id);
        while inner.entries.len() >= self.max_responses || inner.bytes + bytes > self.max_bytes {
            let Some(oldest) = inner.order.front().cloned() else {
                break;
            };
            inner.remove(&oldest);
        }
        inner.bytes += bytes;
        inner.order.push_back(id.to_owned());
        inner.entries.insert(id.to_owned(), (stored, bytes));
    }

    pub fn get(&self, id: &str) -> Option<Stored> {
        let mut inner = self.lock();
        let stored = inner.entries.get(id)?.0.clone();
        if let Some(at) = inner.order.iter().position(|k| k == id) {
            inner.order.remove(at);
        }
        inner.order.push_back(id.to_owned());
        Some(stored)
    }

    pub fn remove(&self, id: &str) -> bool {
        self.lock().remove(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

impl Inner {
    fn remove(&mut self, id: &str) -> bool {
        let Some((_, bytes)) = self.entries.remove(id) else {
            return false;
        };
        self.bytes -= bytes;
        if let Some(at) = self.order.iter().position(|k| k == id) {
            self.order.remove(at);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"text": text}),
            conversation: vec![json!({"role": "user", "content": text})],
        }
    }

    #[test]
    fn keeps_at_most_its_count_least_recently_used_out() {
        let store = ResponseStore::new(2, 1 << 20);
        store.insert("a", stored("a"));
        store.insert("b", stored("b"));
        assert!(store.get("a").is_some()); // b is now the least recently used
        store.insert("c", stored("c"));
        assert!(store.get("b").is_none());
        assert!(store.get("a").is_some() && store.get("c").is_some());
        assert!(store.remove("a") && !store.remove("a"));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn keeps_within_its_bytes() {
        let one = {
            let s = stored(&"x".repeat(100));
            s.response.to_string().len() + s.conversation[0].to_string().len()
        };
        let store = ResponseStore::new(100, 2 * one + 1);
        for id in ["a", "b", "c"] {
            store.insert(id, stored(&"x".repeat(100)));
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none());
        store.insert("big", stored(&"x".repeat(10_000)));
        assert!(store.get("big").is_none(), "larger than the whole store");
        assert_eq!(store.lock().bytes, 2 * one);
    }
}
