//! Property tests for the output path: the incremental UTF-8 decoder (`detok`) and the stop
//! matcher (`stop`). Token bytes arrive in arbitrary pieces; the text that comes out must
//! not depend on where the pieces were cut, and a stop string must be found wherever it
//! straddles a cut, with nothing after it released.
//!
//! Short by default; `PROPTEST_CASES=100000 cargo test --release -p hearth-engine --test
//! fuzz_text` for a long run (see docs/testing.md).

use hearth_engine::detok::Utf8Decoder;
use hearth_engine::stop::{StopMatcher, StopOutcome};
use proptest::prelude::*;

#[path = "../../../tests/support/proptest_config.rs"]
mod proptest_config;
use proptest_config::config;

/// Cut `len` into pieces at these (sorted, deduplicated) points.
fn pieces(len: usize, cuts: &[prop::sample::Index]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

/// Bytes that are mostly UTF-8 text with invalid and truncated sequences mixed in.
fn token_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<String>().prop_map(String::into_bytes),
            2 => prop::sample::select(vec!["é", "€", "😀", "日本", "a", " "]).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..6),
            1 => prop::sample::select(vec![
                vec![0xffu8], vec![0x80], vec![0xc0, 0xaf], vec![0xe4, 0xb8], vec![0xed, 0xa0, 0x80],
                vec![0xf4, 0x90, 0x80, 0x80], vec![0xf0, 0x9f], vec![0xf0, 0x9f, 0x98],
            ]),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

fn decode_in_pieces(bytes: &[u8], cuts: &[prop::sample::Index]) -> String {
    let mut decoder = Utf8Decoder::default();
    let mut out = String::new();
    for (a, b) in pieces(bytes.len(), cuts) {
        out.push_str(&decoder.push(&bytes[a..b]));
    }
    out.push_str(&decoder.finish());
    out
}

/// What the matcher should release for `text`: everything before the earliest stop, or all
/// of it. Only exact when no stop string contains another (see `stop_cut_is_sound`).
fn expected_stop(text: &str, stops: &[String]) -> (String, bool) {
    match stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
    {
        Some(at) => (text[..at].to_owned(), true),
        None => (text.to_owned(), false),
    }
}

/// Push `text` through a matcher in pieces cut at char boundaries; (released text, stopped).
/// Also checks that every release continues what was released before.
fn match_in_pieces(text: &str, stops: &[String], cuts: &[prop::sample::Index]) -> (String, bool) {
    let mut matcher = StopMatcher::new(stops.to_vec());
    let mut out = String::new();
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let char_cuts: Vec<prop::sample::Index> = cuts.to_vec();
    for (a, b) in pieces(boundaries.len() - 1, &char_cuts) {
        let piece = &text[boundaries[a]..boundaries[b]];
        match matcher.push(piece) {
            StopOutcome::Continue(released) => out.push_str(&released),
            StopOutcome::Stopped(released, _) => {
                out.push_str(&released);
                return (out, true);
            }
        }
    }
    out.push_str(&matcher.finish());
    (out, false)
}

/// Text over a small alphabet, so stop strings actually occur, straddle cuts and overlap.
fn small_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "é", "😀", "\n", "<", "|"]),
        0..max,
    )
    .prop_map(|chars| chars.concat())
}

fn stops_for(text: String) -> impl Strategy<Value = (String, Vec<String>)> {
    let len = text.chars().count();
    let from_text = (any::<prop::sample::Index>(), 1usize..6).prop_map({
        let text = text.clone();
        move |(start, n)| {
            let chars: Vec<char> = text.chars().collect();
            if chars.is_empty() {
                return "a".to_owned();
            }
            let start = start.index(chars.len());
            chars[start..(start + n).min(len)].iter().collect()
        }
    });
    let stop = prop_oneof![2 => from_text, 1 => small_text(5)];
    (Just(text), prop::collection::vec(stop, 1..=4))
}

/// Drop every stop string that contains another one. When one stop contains another (say
/// "abcd" and "bc"), which one wins can depend on the cuts: "abc" + "d" stops at "bc",
/// "abcd" at once stops at "abcd" (the earliest start). `stop_cut_is_sound` covers that case.
fn without_nested(stops: Vec<String>) -> Vec<String> {
    let kept: Vec<String> = stops
        .iter()
        .filter(|a| {
            !stops
                .iter()
                .any(|b| *a != b && !b.is_empty() && a.contains(b.as_str()))
        })
        .cloned()
        .collect();
    kept
}

proptest! {
    #![proptest_config(config(5000))]

    /// Decoding in arbitrary pieces equals decoding at once, and both equal
    /// `String::from_utf8_lossy` (one U+FFFD per invalid sequence, as Python does).
    #[test]
    fn utf8_decoding_does_not_depend_on_the_cuts(
        bytes in token_bytes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let one_shot = decode_in_pieces(&bytes, &[]);
        prop_assert_eq!(&one_shot, &String::from_utf8_lossy(&bytes));
        prop_assert_eq!(decode_in_pieces(&bytes, &cuts), one_shot);
    }

    /// A decoder holds back at most one incomplete character.
    #[test]
    fn utf8_decoder_holds_back_little(bytes in token_bytes()) {
        let mut decoder = Utf8Decoder::default();
        let mut out = String::new();
        for (i, byte) in bytes.iter().enumerate() {
            out.push_str(&decoder.push(&[*byte]));
            let lossy = String::from_utf8_lossy(&bytes[..=i]);
            // What came out is the lossy decoding of the bytes so far, or that minus the
            // one replacement character that stands for an incomplete character at the end.
            let held_back = lossy
                .strip_suffix('\u{fffd}')
                .is_some_and(|rest| rest == out);
            prop_assert!(out == lossy || held_back, "{out:?} vs {lossy:?}");
        }
    }

    /// With stop strings none of which contains another, the result is the text before the
    /// earliest stop, wherever the text was cut.
    #[test]
    fn stops_are_found_across_cuts(
        (text, stops) in small_text(40).prop_flat_map(stops_for),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let stops = without_nested(stops);
        let expected = expected_stop(&text, &stops);
        prop_assert_eq!(match_in_pieces(&text, &stops, &[]), expected.clone());
        prop_assert_eq!(match_in_pieces(&text, &stops, &cuts), expected);
    }

    /// Any stop strings: what is released is a prefix of the text that contains no stop
    /// string; a stop is reported exactly when the text contains one, and the cut is at the
    /// start of one.
    #[test]
    fn stop_cut_is_sound(
        (text, stops) in small_text(40).prop_flat_map(stops_for),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let (out, stopped) = match_in_pieces(&text, &stops, &cuts);
        prop_assert!(text.starts_with(&out), "{out:?} is not a prefix of {text:?}");
        for stop in stops.iter().filter(|s| !s.is_empty()) {
            prop_assert!(!out.contains(stop.as_str()), "released {out:?} contains stop {stop:?}");
        }
        let any_stop = stops.iter().any(|s| !s.is_empty() && text.contains(s.as_str()));
        prop_assert_eq!(stopped, any_stop);
        if stopped {
            let rest = &text[out.len()..];
            prop_assert!(stops.iter().any(|s| !s.is_empty() && rest.starts_with(s.as_str())));
        } else {
            prop_assert_eq!(out, text);
        }
    }

    /// The real pipeline: token bytes cut anywhere → decoder → stop matcher. Same result as
    /// decoding everything and cutting at the earliest stop.
    #[test]
    fn decoder_then_matcher_does_not_depend_on_the_cuts(
        (text, stops) in small_text(30).prop_flat_map(stops_for),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let stops = without_nested(stops);
        let bytes = text.as_bytes();
        let mut decoder = Utf8Decoder::default();
        let mut matcher = StopMatcher::new(stops.clone());
        let mut out = String::new();
        let mut stopped = false;
        for (a, b) in pieces(bytes.len(), &cuts) {
            match matcher.push(&decoder.push(&bytes[a..b])) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t, _) => {
                    out.push_str(&t);
                    stopped = true;
                    break;
                }
            }
        }
        if !stopped {
            match matcher.push(&decoder.finish()) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped(t, _) => {
                    out.push_str(&t);
                    stopped = true;
                }
            }
            if !stopped {
                out.push_str(&matcher.finish());
            }
        }
        prop_assert_eq!((out, stopped), expected_stop(&text, &stops));
    }

    /// Long stop strings and long text: the matcher never panics (multibyte cuts included)
    /// and holds back no more than the longest stop string.
    #[test]
    fn matcher_holds_back_less_than_a_stop(
        text in any::<String>(),
        stops in prop::collection::vec(any::<String>(), 0..5),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        let mut matcher = StopMatcher::new(stops.clone());
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
        let mut pushed = 0;
        let mut released = 0;
        for (a, b) in pieces(boundaries.len() - 1, &cuts) {
            let piece = &text[boundaries[a]..boundaries[b]];
            pushed += piece.len();
            match matcher.push(piece) {
                StopOutcome::Continue(t) => released += t.len(),
                StopOutcome::Stopped(..) => return Ok(()),
            }
            prop_assert!(pushed - released < longest.max(1), "held {} bytes", pushed - released);
        }
    }
}
