//! Stop strings: found across token boundaries, never emitted, and text held back only while
//! it could still be the start of a stop string.

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

#[derive(Debug, Default)]
pub struct StopMatcher {
    /// Non-empty stop strings with their index in the caller's list.
    stops: Vec<(usize, String)>,
    /// Text produced but not yet released.
    held: String,
}

/// What to do after new text arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Release this text (possibly empty) and continue.
    Continue(String),
    /// A stop string matched: release this text (everything before it) and finish; the
    /// index of the stop string (in the list given to `new`).
    Stopped(String, usize),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops
                .into_iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.held));
        }
        let earliest = self
            .stops
            .iter()
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, *i)))
            .min();
        if let Some((at, which)) = earliest {
            self.held.truncate(at);
            return StopOutcome::Stopped(std::mem::take(&mut self.held), which);
        }
        let keep = self.longest_partial_match();
        let release = self.held.len() - keep;
        let rest = self.held.split_off(release);
        StopOutcome::Continue(std::mem::replace(&mut self.held, rest))
    }

    /// The sequence ended for another reason: release what was held.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn longest_partial_match(&self) -> usize {
        let held = self.held.as_bytes();
        self.stops
            .iter()
            .map(|(_, stop)| {
                let stop = stop.as_bytes();
                let longest = stop.len().saturating_sub(1).min(held.len());
                (1..=longest)
                    .rev()
                    .find(|&n| held[held.len() - n..] == stop[..n])
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t, _) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_across_pieces_is_cut_and_not_emitted() {
        assert_eq!(
            run(&["END"], &["hello E", "N", "D more"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn partial_match_is_released_when_it_fails() {
        assert_eq!(run(&["END"], &["E", "N", "x"]), ("ENx".into(), false));
    }

    #[test]
    fn releases_text_that_cannot_match_at_once() {
        let mut m = StopMatcher::new(vec!["stop".into()]);
        assert_eq!(m.push("abc s"), StopOutcome::Continue("abc ".into()));
        assert_eq!(m.push("x"), StopOutcome::Continue("sx".into()));
    }

    #[test]
    fn the_matched_stop_is_named_by_its_index_in_the_request() {
        let mut m = StopMatcher::new(vec!["".into(), "zz".into(), "b".into()]);
        assert_eq!(m.push("aab"), StopOutcome::Stopped("aa".into(), 2));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
    }

    #[test]
    fn multibyte_stop_strings() {
        assert_eq!(run(&["。"], &["你好", "。再见"]), ("你好".into(), true));
    }
}
