//! Workflow discovery: tasks that arrive without a workflow label are grouped into clusters of
//! similar tasks, each of which the router then learns like a workflow. Pure and self-contained.
//!
//! - **Sketch** ([`sketch`]): at route time a task's text becomes at most [`SKETCH_TERMS`] u16
//!   term ids (64 bytes, small enough for a signed token). Words: runs of ASCII alphanumerics
//!   (Unicode alphanumerics in non-ASCII text), lowercased; dropped: 1-character words, numbers
//!   of 5+ digits, ASCII runs over 32 bytes (hashes, base64), 56 English function words.
//!   Terms: unigrams and adjacent-word bigrams, hashed with 64-bit FNV-1a plus the splitmix64
//!   finaliser (no std hasher: replicas agree); the id's low bit is the kind (0 unigram, 1
//!   bigram). Unigrams are chosen first (highest count, then smaller id), bigrams only fill
//!   free places, up to `SKETCH_TERMS − FORMAT_TERMS` words.
//! - **Format** ([`FORMAT_TERMS`] more ids, hashed apart from words, weighted as unigrams): the
//!   task's length (log2 of bytes), its lines (log2) and the list items that open them
//!   (`A.`, `(b)`, `12)`, `-`: up to 8), its runs of digits (log2), its first and last word
//!   and its closing character. Tasks of one workflow share a template while their words are
//!   mostly their own: on the four-tier set's shuffled stream (seeds 1, 2, 3, 5), the NMI of
//!   the clusters with the three workflows from task 600 on went from 0.31–0.35 to 0.43–0.58,
//!   and the GSM8K cluster from 84–88% pure to 88–100%. Featureless words still make a
//!   featureless sketch.
//! - **Features**: bucket = id % [`DIM`]; binary presence × idf (`ln((1+n)/(1+df)) + 1` over the
//!   fitted sketches; bigram buckets × 0.5), L2-normalised.
//! - **Fit** ([`ClusterModel::fit`], or one step at a time: [`FitJob`]): k-means on the tf-idf
//!   rows (in the given order, at most `max_rows`): a cold fit starts with linfa-clustering's
//!   k-means++ from `opts.seed` and one linfa iteration on the dense n × DIM matrix, a warm one
//!   from the previous model's centroids; the further Lloyd steps are linfa's m_k-means update
//!   computed on the sparse rows. The centroids are then L2-normalised (spherical k-means
//!   approximation) and tasks assigned by cosine. Deterministic: same input + options →
//!   bit-identical model. An empty cluster or a bad centroid → [`FitError::Diverged`]; fewer
//!   than 4·k usable sketches → [`FitError::TooFewTasks`]; k is clamped to 1..=64.
//! - **Stable ids**: new centroids take the ids of old ones by greedy maximum-cosine matching
//!   (≥ `match_floor`); the rest get fresh ids, never reused. [`FALLBACK`] (0) is the cluster of
//!   featureless tasks (empty sketch: no words, one repeated word, binary junk) and of tasks
//!   whose best cosine is under `min_similarity`.
//! - **Bounds**: a model holds k × DIM f32 centroids + DIM idf + ≤5 term buckets per cluster: about
//!   72 KB for k = 16 (`memory_bytes`); [`TermNames`] ≤ DIM names of ≤ 40 bytes (~43 KB seen).
//!   A fit holds its rows (≤ 32 values each) and k × DIM centroids; a cold fit's first step
//!   builds the dense matrix, max_rows × DIM × 4 B = 8 MiB by default.
//!
//! Measured before the Lloyd steps were sparse (2026-12-07: see docs/experiments.md), on RouteLLM train (9,089 tasks: 57 MMLU subjects + gsm8k): fit on 2,048, scored on
//! the other 7,041; release build, one core of the shared 2-core dev machine (timings ±30%);
//! NMI with arithmetic-mean normalisation. Defaults (n_runs 3, 50 iterations), k = 4 / 16 / 64:
//! - cold fit (median of 3): 0.8–1.0 s / 4.0 s / 16 s (n_runs 1: 0.39 / 1.2–2.0 / 4.6–5.1 s;
//!   linfa's k-means++ seeding is O(n·k²·DIM) and most of the k = 64 time); warm refit: 0.11 s
//!   (k = 4), 0.64–0.83 s (k = 16).
//! - NMI with the sketch's words only (before its format terms), 58 labels: 0.27 / 0.27 /
//!   0.26; gsm8k vs MMLU: 0.23 / 0.10 / 0.06 (a 2-label NMI is
//!   capped near 0.38 / 0.19 / 0.13 at these k); at k = 4, 95% of gsm8k tasks fall in
//!   gsm8k-majority clusters. With DIM = 2048: +0.02–0.03 (58 labels), twice the fit time.
//! - refit on an 80%-overlapping, reordered sample with `previous`: 97% (k = 4) / 95% (k = 16)
//!   of the shared tasks keep their id (27% at k = 16 without the warm start).
//! - `sketch` of a 2 KB text (2026-12-08, same session): 4.8–6.5 µs with the format terms
//!   (one memchr pass and one byte loop over the first 4 KiB: 0.87 µs), 4.3 µs without.
//! - `sketch` of a 2 KB text, earlier: 12–15 µs (456-byte mean prompt: 5–6 µs; FNV-1a alone
//!   over the 2 KB costs 2.5 µs, `str::split` into words 5 µs); `assign` with the sketch
//!   given: 0.3–0.4 / 0.55 / 1.6–2.0 µs. `memory_bytes`: 21 KB / 73 KB / 280 KB.

use crate::domain::features::{FNV_OFFSET, FNV_PRIME, fnv_byte, mix};
use linfa::DatasetBase;
use linfa::traits::Fit;
use linfa_clustering::KMeans;
use ndarray::Array2;
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Hashed feature buckets (even, and a power of two that divides 2^16).
pub const DIM: usize = 1024;
/// Most term ids in a sketch. A 450-byte prompt has ~25 distinct non-stopword words, so this
/// keeps all words of a typical task; ties go to the smaller id (a bottom-k hash sample: texts
/// that share vocabulary keep the same ids).
pub const SKETCH_TERMS: usize = 32;
/// Of a sketch's ids, how many are the task's format ([`Format`]); its words fill the rest.
pub const FORMAT_TERMS: usize = 7;
/// What a sketch's format terms read of a text's start (lines, list items, numbers: one byte
/// loop) and of either end (the first word and the last), in bytes.
const FORMAT_SCAN_BYTES: usize = 4096;
const FORMAT_TAIL_BYTES: usize = 64;
/// The cluster of featureless tasks; fitted ids start at 1.
pub const FALLBACK: u32 = 0;
/// Largest k.
pub const MAX_K: usize = 64;
/// A fit needs at least this many usable sketches per cluster.
pub const MIN_TASKS_PER_CLUSTER: usize = 4;
/// Terms named per cluster.
pub const TOP_TERMS: usize = 5;
/// [`sketch`] reads at most this prefix of a text, and counts at most MAX_TERMS terms. Route
/// sketches every unlabelled task, at about 10 ns a byte: reading 8 KiB, a 2 KB task took
/// 21 µs, over the 20 µs the whole decision may take; 1 KiB still 10.9 µs. The median prompt of
/// the bundled data is 456 bytes, so most tasks are read whole; of a long one, its opening.
const MAX_SCAN_BYTES: usize = 512;
const MAX_TERMS: usize = 2048;
const MAX_WORD_BYTES: usize = 32;
/// Bigrams are mostly unique to one text: at full weight, and chosen like unigrams, they drowned
/// the shared vocabulary (RouteLLM 58-label NMI 0.17 instead of 0.26).
const BIGRAM_WEIGHT: f32 = 0.5;
const NAME_BYTES: usize = 40;

const STOPWORDS: [&str; 56] = [
    "the", "of", "and", "to", "in", "is", "it", "that", "for", "on", "with", "as", "was", "be",
    "by", "this", "are", "or", "at", "from", "an", "which", "what", "have", "has", "not", "but",
    "can", "will", "would", "there", "their", "they", "these", "its", "all", "if", "then", "than",
    "so", "do", "does", "been", "were", "we", "you", "your", "he", "she", "his", "her", "our",
    "who", "how", "when", "had",
];

/// Open-addressed set of the stopwords' FNV states (0 = empty), built at compile time.
const STOP_TABLE: [u64; 128] = {
    let (mut t, mut i) = ([0u64; 128], 0);
    while i < STOPWORDS.len() {
        let (w, mut h, mut j) = (STOPWORDS[i].as_bytes(), FNV_OFFSET, 0);
        while j < w.len() {
            (h, j) = (fnv_byte(h, w[j]), j + 1);
        }
        let mut slot = (mix(h) & 127) as usize;
        while t[slot] != 0 {
            slot = (slot + 1) & 127;
        }
        (t[slot], i) = (h, i + 1);
    }
    t
};

/// Calls `f(word, fnv)` for each word of `text` (see the module doc), `fnv` the FNV-1a of the
/// lowercase word. False when the text is junk: over 1/8 of its characters are control
/// characters other than whitespace, or U+FFFD (what `from_utf8_lossy` makes of binary).
fn words<'a>(text: &'a str, mut f: impl FnMut(&'a str, u64)) -> bool {
    let text = text
        .get(..floor_boundary(text, MAX_SCAN_BYTES))
        .unwrap_or("");
    let bytes = text.as_bytes();
    // Only called at a non-ASCII byte, which is a character boundary there.
    let char_at = |i: usize| text.get(i..).and_then(|s| s.chars().next()).unwrap_or(' ');
    let alnum = |i, b: u8| b.is_ascii_alphanumeric() || (b >= 0x80 && char_at(i).is_alphanumeric());
    let (mut i, mut junk, mut total) = (0, 0usize, 0usize);
    while let Some(&b) = bytes.get(i) {
        if !alnum(i, b) {
            let c = if b < 0x80 { char::from(b) } else { char_at(i) };
            junk += usize::from((c.is_control() && !c.is_ascii_whitespace()) || c == '\u{FFFD}');
            (total, i) = (total + 1, i + c.len_utf8());
            continue;
        }
        let (start, mut h, mut chars, mut digits, mut ascii) = (i, FNV_OFFSET, 0, true, true);
        while let Some(&b) = bytes.get(i) {
            if b.is_ascii_alphanumeric() {
                // For ASCII letters and digits, setting bit 5 is `to_ascii_lowercase`.
                (h, digits, i) = (fnv_byte(h, b | 0x20), digits && b.is_ascii_digit(), i + 1);
            } else if alnum(i, b) {
                (ascii, digits, i) = (false, false, i + char_at(i).len_utf8());
            } else {
                break;
            }
            chars += 1;
        }
        total += chars;
        if chars >= 2
            && !(digits && chars > 4)
            && (!ascii || i - start <= MAX_WORD_BYTES)
            && let Some(w) = text.get(start..i)
        {
            f(w, if ascii { h } else { fnv_lower(w) });
        }
    }
    junk * 8 <= total
}

/// The smallest character boundary of `s` at or above `min`.
fn ceil_boundary(s: &str, min: usize) -> usize {
    (min..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len())
}

/// The largest character boundary of `s` at or below `max`.
fn floor_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

fn fnv_lower(w: &str) -> u64 {
    let (mut buf, mut h) = ([0u8; 4], FNV_OFFSET);
    for c in w.chars().flat_map(char::to_lowercase) {
        h = c.encode_utf8(&mut buf).bytes().fold(h, fnv_byte);
    }
    h
}

/// Calls `f(id, previous, word)` for the unigrams (previous None) and/or the bigrams
/// "previous word" of `text`, stopwords skipped (a bigram bridges over them). Unigram hash:
/// splitmix64(FNV-1a(word)); bigram: splitmix64(FNV(w1) × FNV prime XOR FNV(w2)).
fn terms<'a>(
    text: &'a str,
    (unigrams, bigrams): (bool, bool),
    mut f: impl FnMut(u16, Option<&'a str>, &'a str),
) -> bool {
    let mut prev: Option<(&'a str, u64)> = None;
    words(text, |w, h| {
        let mixed = mix(h);
        let mut slot = (mixed & 127) as usize;
        while STOP_TABLE[slot] != 0 {
            if STOP_TABLE[slot] == h {
                return;
            }
            slot = (slot + 1) & 127;
        }
        if unigrams {
            f((mixed & 0xFFFE) as u16, None, w);
        }
        if let Some((p, ph)) = prev.filter(|_| bigrams) {
            f((mix(ph.wrapping_mul(FNV_PRIME) ^ h) | 1) as u16, Some(p), w);
        }
        prev = Some((w, h));
    })
}

/// A task's sketch: up to [`SKETCH_TERMS`] distinct term ids, sorted ascending (see the module
/// doc). Empty when the text is featureless.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sketch(pub Vec<u16>);

impl Sketch {
    /// Its distinct feature buckets, ascending, as (bucket, 0.0) pairs; returns how many.
    fn buckets(&self, out: &mut [(u16, f32); SKETCH_TERMS]) -> usize {
        let (b, m) = distinct_buckets(&self.0);
        for (o, &x) in out.iter_mut().zip(&b[..m]) {
            *o = (x, 0.0);
        }
        m
    }
}

/// The distinct feature buckets (`id % DIM`) of a sketch's first [`SKETCH_TERMS`] ids,
/// ascending, and how many there are.
pub fn distinct_buckets(ids: &[u16]) -> ([u16; SKETCH_TERMS], usize) {
    let mut b = [0u16; SKETCH_TERMS];
    let n = ids.len().min(SKETCH_TERMS);
    for (b, id) in b.iter_mut().zip(ids) {
        *b = id % DIM as u16;
    }
    b[..n].sort_unstable();
    let mut m = 0;
    for i in 0..n {
        if i == 0 || b[i - 1] != b[i] {
            (b[m], m) = (b[i], m + 1);
        }
    }
    (b, m)
}

/// Sketches a text: pure, deterministic, allocates only the result. Featureless (empty): fewer
/// than two distinct words ("", "!!!", "a a a", "ok ok ok"), or junk.
pub fn sketch(text: &str) -> Sketch {
    let (mut ids, mut n) = ([0u16; MAX_TERMS], 0);
    let push = |ids: &mut [u16], n: &mut usize, id| {
        if let Some(slot) = ids.get_mut(*n) {
            (*slot, *n) = (id, *n + 1);
        }
    };
    let (mut first, mut varied) = (None, false);
    let clean = terms(text, (true, false), |id, _, _| {
        varied |= *first.get_or_insert(id) != id;
        push(&mut ids, &mut n, id);
    });
    if !clean || !varied {
        return Sketch::default();
    }
    let distinct = |ids: &mut [u16]| {
        ids.sort_unstable();
        ids.chunk_by(|a, b| a == b).count()
    };
    if distinct(&mut ids[..n]) < WORD_TERMS {
        terms(text, (false, true), |id, _, _| push(&mut ids, &mut n, id));
        distinct(&mut ids[..n]);
    }
    // Rank keys (distinct, so the choice is exact): unigram, count, smaller id. Kept sorted
    // descending by insertion: ~100 insertions for a 2 KB text.
    let mut top = [0u32; WORD_TERMS];
    for run in ids[..n].chunk_by(|a, b| a == b) {
        let id = u32::from(run[0]);
        let key =
            u32::from(id & 1 == 0) << 31 | (run.len().min(0x7FFF) as u32) << 16 | !id & 0xFFFF;
        if key > top[WORD_TERMS - 1] {
            let at = top.partition_point(|&t| t > key);
            top.copy_within(at..WORD_TERMS - 1, at + 1);
            top[at] = key;
        }
    }
    let mut out: Vec<u16> = Vec::with_capacity(SKETCH_TERMS);
    out.extend(top.iter().filter(|&&t| t != 0).map(|&t| !t as u16));
    out.extend(Format::of(text).ids());
    out.sort_unstable();
    out.dedup();
    Sketch(out)
}

/// Most word terms in a sketch: the rest of its ids are its format's.
const WORD_TERMS: usize = SKETCH_TERMS - FORMAT_TERMS;

/// A task's format: what a workflow's template shows whatever the task is about. Tasks of one
/// workflow share it (a question with four lettered options ending in "Answer:", a word
/// problem, a diff to review) while their words are mostly their own; on the four-tier set's
/// stream, the words alone put 30% of the math word problems in clusters of quiz questions
/// (benches/quality/multitier; docs/experiments.md, tenth session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Format<'a> {
    /// `log2` of the byte length.
    length: u32,
    /// `log2` of the lines read (up to [`FORMAT_SCAN_BYTES`]).
    lines: u32,
    /// Lines read that open a list item: `A.`, `(b)`, `12)`, `3:`, `-`, `*`, `•`; at most 8.
    items: u32,
    /// `log2(1 + n)` of the runs of digits read.
    numbers: u32,
    /// The first word and the last (lowercase FNV-1a; 0 for none): a template's opening and
    /// its closing cue ("answer", "solution", "python").
    first: (u64, &'a str),
    last: (u64, &'a str),
    /// The last non-blank character's kind: `?`, `:`, `.`, `!`, `)`, `w` (a letter), `d` (a
    /// digit), `o` (any other), `-` (none).
    end: u8,
}

impl<'a> Format<'a> {
    fn of(text: &'a str) -> Self {
        // Lines and the list items that open them (memchr), runs of digits (one byte loop).
        let read = &text.as_bytes()[..text.len().min(FORMAT_SCAN_BYTES)];
        let (mut lines, mut items) = (1u32, u32::from(opens_item(read)));
        for i in memchr::memchr_iter(b'\n', read) {
            lines += 1;
            items += u32::from(opens_item(&read[i + 1..]));
        }
        let (mut numbers, mut prev) = (0u32, 0u8);
        for &b in read {
            let digit = u8::from(b.wrapping_sub(b'0') < 10);
            numbers += u32::from(digit & !prev & 1);
            prev = digit;
        }
        let head = text
            .get(..floor_boundary(text, FORMAT_TAIL_BYTES))
            .unwrap_or("");
        let mut first = (0, "");
        words(head, |w, h| {
            if first.0 == 0 {
                first = (h, w);
            }
        });
        let tail = text
            .get(ceil_boundary(text, text.len().saturating_sub(FORMAT_TAIL_BYTES))..)
            .unwrap_or("");
        let mut last = (0, "");
        words(tail, |w, h| last = (h, w));
        let end = match text.trim_end().chars().next_back() {
            Some(c @ ('?' | ':' | '.' | '!' | ')')) => c as u8,
            Some(c) if c.is_numeric() => b'd',
            Some(c) if c.is_alphabetic() => b'w',
            Some(_) => b'o',
            None => b'-',
        };
        Self {
            length: (text.len().max(1)).ilog2(),
            lines: lines.max(1).ilog2(),
            items: items.min(8),
            numbers: (numbers + 1).ilog2(),
            first,
            last,
            end,
        }
    }

    /// Its terms as (kind, value): each kind hashes into its own ids.
    fn terms(&self) -> [(u8, u64); FORMAT_TERMS] {
        [
            (b'L', u64::from(self.length)),
            (b'N', u64::from(self.lines)),
            (b'I', u64::from(self.items)),
            (b'D', u64::from(self.numbers)),
            (b'F', self.first.0),
            (b'Z', self.last.0),
            (b'E', u64::from(self.end)),
        ]
    }

    /// Its term ids: even (weighted as unigrams), hashed apart from words by their kind.
    fn ids(&self) -> impl Iterator<Item = u16> {
        self.terms().into_iter().map(|(kind, value)| {
            let h = value
                .to_le_bytes()
                .into_iter()
                .fold(fnv_byte(FNV_OFFSET ^ 0xFF, kind), fnv_byte);
            (mix(h) & 0xFFFE) as u16
        })
    }

    /// Its terms named for people: `[4 items]`, `[ends "answer"]`.
    fn names(&self) -> [String; FORMAT_TERMS] {
        let word = |w: &str| w.to_lowercase();
        [
            format!("[{} bytes]", span(1 << self.length, (2 << self.length) - 1)),
            match span(1 << self.lines, (2 << self.lines) - 1) {
                one if one == "1" => "[1 line]".to_owned(),
                lines => format!("[{lines} lines]"),
            },
            format!("[{} items]", self.items),
            format!(
                "[{} numbers]",
                span((1 << self.numbers) - 1, (2 << self.numbers) - 2)
            ),
            format!("[starts \"{}\"]", word(self.first.1)),
            format!("[ends \"{}\"]", word(self.last.1)),
            match self.end {
                b'w' => "[ends in a letter]".to_owned(),
                b'd' => "[ends in a digit]".to_owned(),
                b'o' => "[ends in a symbol]".to_owned(),
                b'-' => "[blank]".to_owned(),
                c => format!("[ends with '{}']", char::from(c)),
            },
        ]
    }
}

/// `lo` alone, or `lo–hi`.
fn span(lo: u64, hi: u64) -> String {
    if lo >= hi {
        lo.to_string()
    } else {
        format!("{lo}–{hi}")
    }
}

/// Whether the line `rest` starts opens a list item: spaces or tabs, then `-`, `*` or `•` and
/// a blank; or an optional `(` or `[`, one letter or one or two digits, and `.`, `)`, `]` or `:`
/// ending the line or followed by a blank.
fn opens_item(rest: &[u8]) -> bool {
    let indent = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let line = &rest[indent..];
    let blank_at = |i: usize| line.get(i).is_none_or(|b| b.is_ascii_whitespace());
    if line.starts_with(b"- ") || line.starts_with(b"* ") || line.starts_with("• ".as_bytes()) {
        return true;
    }
    let at = usize::from(matches!(line.first(), Some(b'(' | b'[')));
    let mark = |i: usize| matches!(line.get(i), Some(b'.' | b')' | b']' | b':'));
    match line.get(at) {
        Some(b) if b.is_ascii_alphabetic() => mark(at + 1) && blank_at(at + 2),
        Some(b) if b.is_ascii_digit() => {
            let n = 1 + usize::from(line.get(at + 1).is_some_and(u8::is_ascii_digit));
            mark(at + n) && blank_at(at + n + 1)
        }
        _ => false,
    }
}

/// Bucket → a representative term, so that top terms print as words. Per bucket it keeps the
/// majority term of what it observed (Boyer–Moore vote: the first term seen, replaced when
/// others outvote it), so a rare colliding term does not name a busy bucket. ≤ DIM names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TermNames(Vec<Option<(String, u32)>>);

impl TermNames {
    /// Records the terms of a text (nothing for junk).
    pub fn observe(&mut self, text: &str) {
        let mut seen: Vec<(u16, Option<&str>, &str)> = Vec::new();
        if !terms(text, (true, true), |id, p, w| seen.push((id, p, w))) {
            return;
        }
        self.0.resize(DIM, None);
        let format = Format::of(text);
        let words = seen.into_iter().map(|(id, prev, word)| {
            (
                id,
                prev.map_or_else(|| word.to_owned(), |p| format!("{p} {word}")),
            )
        });
        for (id, mut name) in words.chain(format.ids().zip(format.names())) {
            name = name.to_lowercase();
            name.truncate(floor_boundary(&name, NAME_BYTES));
            match &mut self.0[usize::from(id) % DIM] {
                Some((n, c)) if *n == name => *c = c.saturating_add(1),
                Some((_, c)) if *c > 1 => *c -= 1,
                slot => *slot = Some((name, 1)),
            }
        }
    }

    /// The name of a bucket, if any term was observed there.
    pub fn name(&self, bucket: usize) -> Option<&str> {
        self.0.get(bucket)?.as_ref().map(|(n, _)| n.as_str())
    }
    pub fn memory_bytes(&self) -> usize {
        let names: usize = self.0.iter().flatten().map(|(n, _)| n.capacity()).sum();
        size_of::<Self>() + self.0.capacity() * size_of::<Option<(String, u32)>>() + names
    }
}

/// Options of [`ClusterModel::fit`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    /// Number of clusters, clamped to 1..=MAX_K.
    pub k: usize,
    /// Seeds k-means++ (Xoshiro256Plus).
    pub seed: u64,
    /// Most Lloyd iterations per run.
    pub max_iterations: u64,
    /// k-means++ runs of a cold fit (a warm start runs once); the lowest inertia wins.
    pub n_runs: usize,
    /// Convergence: distance between successive centroid matrices.
    pub tolerance: f32,
    /// Most sketches used (evenly spaced when there are more).
    pub max_rows: usize,
    /// An old id goes to a new centroid whose cosine with the old one is at least this.
    pub match_floor: f32,
    /// `assign` answers FALLBACK below this best cosine.
    pub min_similarity: f32,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            k: 16,
            seed: 0x5eed,
            max_iterations: 50,
            n_runs: 3,
            tolerance: 1e-4,
            max_rows: 2048,
            match_floor: 0.5,
            min_similarity: 0.02,
        }
    }
}

/// Why a fit failed; the caller keeps its previous model.
#[derive(Debug, Clone, PartialEq)]
pub enum FitError {
    /// Fewer usable (non-empty) sketches than MIN_TASKS_PER_CLUSTER × k.
    TooFewTasks { usable: usize, needed: usize },
    /// Clusters left with no task (e.g. fewer distinct tasks than k), or centroids that are
    /// zero or not finite.
    Diverged { empty: usize, bad: usize },
    /// linfa refused the parameters or failed.
    Linfa(String),
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FitError::TooFewTasks { usable, needed } => {
                write!(f, "too few tasks: {usable} usable, {needed} needed")
            }
            FitError::Diverged { empty, bad } => {
                write!(
                    f,
                    "k-means diverged: {empty} empty clusters, {bad} bad centroids"
                )
            }
            FitError::Linfa(e) => write!(f, "k-means failed: {e}"),
        }
    }
}

impl std::error::Error for FitError {}

/// One fitted cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    /// Stable id: never FALLBACK, never reused once retired.
    pub id: u32,
    /// Fitted sketches nearest to it.
    pub size: u32,
    /// Its most telling terms, as buckets: where its centroid most exceeds the mean of the
    /// others (named at read time by a [`TermNames`]: the fold that fits has no texts).
    pub top_buckets: Vec<u16>,
    /// Unit-length centroid, DIM values.
    pub centroid: Vec<f32>,
}

/// A fitted clustering, its clusters ordered by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterModel {
    clusters: Vec<Cluster>,
    /// Per bucket: idf over the fitted sketches (× BIGRAM_WEIGHT for bigram buckets).
    idf: Vec<f32>,
    next_id: u32,
    min_similarity: f32,
}

type Row = Vec<(u16, f32)>;

impl ClusterModel {
    /// Fits clusters to the sketches of a scope's recent tasks (empty sketches are skipped).
    /// With `previous`: warm start from its centroids (falling
    /// back to k-means++ if that leaves a cluster empty) and stable ids (see the module doc).
    /// All of it at once; [`FitJob`] runs the same fit one Lloyd step at a time.
    pub fn fit(
        sketches: &[Sketch],
        opts: &FitOptions,
        previous: Option<&ClusterModel>,
    ) -> Result<ClusterModel, FitError> {
        let mut job = FitJob::start(sketches, opts, previous.map(|p| Arc::new(p.clone())))?;
        loop {
            if let Some(done) = job.step() {
                return done;
            }
        }
    }

    /// The cluster of a task: the nearest centroid by cosine on the sketch's tf-idf vector, or
    /// FALLBACK for a featureless sketch or a best cosine under `min_similarity`.
    pub fn assign(&self, s: &Sketch) -> u32 {
        self.assign_scored(s).0
    }

    /// [`ClusterModel::assign`] and the cosine (0 for FALLBACK).
    pub fn assign_scored(&self, s: &Sketch) -> (u32, f32) {
        let mut b = [(0, 0.0); SKETCH_TERMS];
        let n = s.buckets(&mut b);
        let row = &mut b[..n];
        weigh(row, &self.idf);
        let centroids = self.clusters.iter().map(|c| c.centroid.as_slice());
        match nearest(centroids, row) {
            (i, sim) if sim >= self.min_similarity && sim > 0.0 => (self.clusters[i].id, sim),
            _ => (FALLBACK, 0.0),
        }
    }

    /// A cluster's most telling terms, named by `names` (`#<bucket>` where it has none); empty
    /// if there is no such cluster.
    pub fn top_terms(&self, id: u32, names: &TermNames) -> Vec<String> {
        let cluster = self.clusters.iter().find(|c| c.id == id);
        (cluster.map_or(&[][..], |c| c.top_buckets.as_slice()).iter())
            .map(|&b| {
                names
                    .name(usize::from(b))
                    .map_or_else(|| format!("#{b}"), str::to_owned)
            })
            .collect()
    }

    /// The cluster ids, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.clusters.iter().map(|c| c.id)
    }

    /// The clusters, ordered by id.
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    /// Bytes held, inline and on the heap.
    pub fn memory_bytes(&self) -> usize {
        let cluster = |c: &Cluster| c.centroid.capacity() * 4 + c.top_buckets.capacity() * 2;
        let clusters: usize = self.clusters.iter().map(cluster).sum();
        size_of::<Self>()
            + self.clusters.capacity() * size_of::<Cluster>()
            + clusters
            + self.idf.capacity() * 4
    }
}

/// Sets a row's weights to its buckets' idf, L2-normalised.
fn weigh(row: &mut [(u16, f32)], idf: &[f32]) {
    row.iter_mut()
        .for_each(|(j, w)| *w = idf.get(usize::from(*j)).copied().unwrap_or(0.0));
    let norm = row.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
    row.iter_mut()
        .for_each(|(_, w)| *w = if norm > 0.0 { *w / norm } else { 0.0 });
}

/// A fit in progress, one Lloyd step at a time, so that no single call pays for a whole fit
/// ([`ClusterModel::fit`] runs one to its end). The sketches are prepared once
/// ([`FitJob::start`]: their tf-idf rows). A cold fit's first step is linfa-clustering's
/// k-means (k-means++ from `opts.seed`, `n_runs` runs, one iteration, on the dense n × DIM
/// matrix); every other step is the same m_k-means update linfa runs (each centroid moves to
/// the mean of its rows and its old self), computed on the sparse rows: a row has at most
/// [`SKETCH_TERMS`] of DIM values, so a step costs n·k·32 instead of linfa's n·k·DIM (a full
/// warm refit of 2,048 rows, k = 8: 82 ms with linfa's dense steps). The step that converges
/// (linfa's test: the centroid matrices within `tolerance`) or reaches `max_iterations`
/// returns the model; a warm start that leaves a cluster empty starts again cold.
#[derive(Debug, Clone, PartialEq)]
pub struct FitJob {
    opts: FitOptions,
    rows: Vec<Row>,
    idf: Vec<f32>,
    previous: Option<Arc<ClusterModel>>,
    /// The centroids after the last step (the warm start before the first); `None` before the
    /// first step of a cold fit.
    centroids: Option<Array2<f32>>,
    /// Whether the centroids descend from the previous model's.
    warm: bool,
    /// Steps run since the (last) start.
    steps: u64,
}

impl FitJob {
    /// Prepares a fit of `sketches` (see [`ClusterModel::fit`]); fails at once with too few
    /// usable sketches.
    pub fn start(
        sketches: &[Sketch],
        opts: &FitOptions,
        previous: Option<Arc<ClusterModel>>,
    ) -> Result<FitJob, FitError> {
        let k = opts.k.clamp(1, MAX_K);
        let mut rows: Vec<Row> = (sketches.iter())
            .filter_map(|s| {
                let mut b = [(0, 0.0); SKETCH_TERMS];
                let n = s.buckets(&mut b);
                (n > 0).then(|| b[..n].to_vec())
            })
            .collect();
        let (usable, needed) = (rows.len(), MIN_TASKS_PER_CLUSTER * k);
        if usable < needed {
            return Err(FitError::TooFewTasks { usable, needed });
        }
        let cap = opts.max_rows.max(needed);
        if usable > cap {
            rows = (0..cap).map(|i| rows[i * usable / cap].clone()).collect();
        }
        let mut df = vec![0u32; DIM];
        for &(j, _) in rows.iter().flatten() {
            df[usize::from(j)] += 1;
        }
        let n = rows.len() as f32;
        let idf: Vec<f32> = (df.iter().enumerate())
            .map(|(b, &d)| {
                let kind = if b % 2 == 1 { BIGRAM_WEIGHT } else { 1.0 };
                (((1.0 + n) / (1.0 + d as f32)).ln() + 1.0) * kind
            })
            .collect();
        rows.iter_mut().for_each(|row| weigh(row, &idf));
        let centroids = previous.as_deref().map(|p| warm_start(p, &rows, k));
        Ok(FitJob {
            opts: FitOptions { k, ..opts.clone() },
            warm: centroids.is_some(),
            rows,
            idf,
            previous,
            centroids,
            steps: 0,
        })
    }

    /// Runs one Lloyd step; `Some` with the fit's outcome once it is over.
    pub fn step(&mut self) -> Option<Result<ClusterModel, FitError>> {
        let next = match &self.centroids {
            Some(c) => self.sparse_step(c),
            None => match self.seed() {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            },
        };
        self.steps += 1;
        // linfa's own test between two iterations: the L2 distance of the centroid matrices.
        let converged = self.centroids.as_ref().is_some_and(|c| {
            let sq = c.iter().zip(next.iter()).fold(0.0f32, |acc, (a, b)| {
                let d = a - b;
                acc + d * d
            });
            sq.sqrt() < self.opts.tolerance
        });
        self.centroids = Some(next);
        if !converged && self.steps < self.opts.max_iterations {
            return None;
        }
        let done = self.centroids.as_ref().map(|c| self.finish(c));
        match done {
            Some(Err(_)) if self.warm => {
                // The warm start left a cluster empty: again from k-means++.
                (self.warm, self.centroids, self.steps) = (false, None, 0);
                None
            }
            other => other,
        }
    }

    /// A cold fit's first step: linfa-clustering's k-means++ (`n_runs` runs from `opts.seed`,
    /// the lowest inertia wins) and one Lloyd iteration, on the dense rows.
    fn seed(&self) -> Result<Array2<f32>, FitError> {
        let mut data = Array2::<f32>::zeros((self.rows.len(), DIM));
        for (row, mut dense) in self.rows.iter().zip(data.rows_mut()) {
            row.iter().for_each(|&(j, w)| dense[usize::from(j)] = w);
        }
        let params =
            KMeans::params_with_rng(self.opts.k, Xoshiro256Plus::seed_from_u64(self.opts.seed))
                .max_n_iterations(1)
                .tolerance(self.opts.tolerance)
                .n_runs(self.opts.n_runs);
        let fitted = params.fit(&DatasetBase::from(data.view()));
        let fitted = fitted.map_err(|e| FitError::Linfa(e.to_string()))?;
        Ok(fitted.centroids().to_owned())
    }

    /// One m_k-means step from `centroids` on the sparse rows: each row goes to the nearest
    /// centroid by squared L2 distance (`‖r‖² − 2 r·c + ‖c‖²`, the first on ties), and each
    /// centroid becomes the mean of its rows and its old self (as linfa's step).
    fn sparse_step(&self, centroids: &Array2<f32>) -> Array2<f32> {
        let norms: Vec<f32> = centroids
            .rows()
            .into_iter()
            .map(|c| c.iter().map(|x| x * x).sum())
            .collect();
        let mut sums = Array2::<f32>::zeros(centroids.raw_dim());
        let mut counts = vec![1u32; centroids.nrows()];
        for row in &self.rows {
            let own: f32 = row.iter().map(|&(_, w)| w * w).sum();
            let mut best = (0, f32::INFINITY);
            for (i, c) in centroids.rows().into_iter().enumerate() {
                let dot: f32 = row
                    .iter()
                    .map(|&(j, w)| w * c.get(usize::from(j)).copied().unwrap_or(0.0))
                    .sum();
                let d = own - 2.0 * dot + norms[i];
                if d < best.1 {
                    best = (i, d);
                }
            }
            let mut sum = sums.row_mut(best.0);
            for &(j, w) in row {
                if let Some(x) = sum.get_mut(usize::from(j)) {
                    *x += w;
                }
            }
            counts[best.0] += 1;
        }
        sums += centroids;
        for (mut c, &n) in sums.rows_mut().into_iter().zip(&counts) {
            c /= n as f32;
        }
        sums
    }

    /// The model of fitted `centroids`: L2-normalised, each task assigned by cosine, ids kept
    /// from the previous model where a centroid matches one; an empty cluster or a bad centroid
    /// is [`FitError::Diverged`].
    fn finish(&self, fitted: &Array2<f32>) -> Result<ClusterModel, FitError> {
        let (opts, k) = (&self.opts, self.opts.k);
        let (mut centroids, mut bad) = (Vec::with_capacity(k), 0);
        for c in fitted.rows() {
            let norm = c.iter().map(|x| x * x).sum::<f32>().sqrt();
            bad += usize::from(!(norm.is_finite() && norm > 0.0));
            centroids.push(c.iter().map(|x| x / norm).collect::<Vec<f32>>());
        }
        let mut sizes = vec![0u32; k];
        for row in &self.rows {
            sizes[nearest(centroids.iter().map(Vec::as_slice), row).0] += 1;
        }
        let empty = sizes.iter().filter(|&&s| s == 0).count();
        if empty > 0 || bad > 0 || centroids.len() != k {
            return Err(FitError::Diverged { empty, bad });
        }
        // Stable ids: greedy on the k_new × k_old cosine matrix, best pairs first.
        let previous = self.previous.as_deref();
        let old = previous.map_or(&[][..], |p| p.clusters.as_slice());
        let mut pairs = Vec::new();
        for (i, c) in centroids.iter().enumerate() {
            for (j, o) in old.iter().enumerate() {
                let sim: f32 = c.iter().zip(&o.centroid).map(|(a, b)| a * b).sum();
                if sim >= opts.match_floor {
                    pairs.push((sim, i, j));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        let (mut ids, mut taken) = (vec![None; k], vec![false; old.len()]);
        for (_, i, j) in pairs {
            if ids[i].is_none() && !taken[j] {
                (ids[i], taken[j]) = (Some(old[j].id), true);
            }
        }
        let mut next_id = previous
            .map_or(FALLBACK + 1, |p| p.next_id)
            .max(FALLBACK + 1);
        let mut clusters: Vec<Cluster> = Vec::with_capacity(k);
        for (i, centroid) in centroids.iter().enumerate() {
            let id = ids[i].unwrap_or_else(|| {
                next_id = next_id.saturating_add(1);
                next_id - 1
            });
            clusters.push(Cluster {
                id,
                size: sizes[i],
                top_buckets: top_buckets(&centroids, i),
                centroid: centroid.clone(),
            });
        }
        clusters.sort_by_key(|c| c.id);
        Ok(ClusterModel {
            clusters,
            idf: self.idf.clone(),
            next_id,
            min_similarity: opts.min_similarity,
        })
    }
}

/// Initial centroids from a previous model: its k largest clusters, then (when k grew) one at a
/// time, a split of the cluster holding the most rows ([`split_largest`]; the row least like
/// every chosen centroid where none splits). The farthest row alone was an outlier: on the
/// four-tier set's stream four of eight clusters kept 1–28 tasks each, and the math word
/// problems shared a cluster with a quiz template; with splits all eight hold tasks, and
/// stripped four-tier runs cost 1.20 (1.33)× the hindsight mix against 1.28 (1.76)×
/// (docs/experiments.md, tenth session).
fn warm_start(p: &ClusterModel, rows: &[Row], k: usize) -> Array2<f32> {
    let mut chosen: Vec<&Cluster> = p.clusters.iter().collect();
    chosen.sort_by_key(|c| (std::cmp::Reverse(c.size), c.id));
    let mut init: Vec<Vec<f32>> = chosen.iter().take(k).map(|c| c.centroid.clone()).collect();
    while init.len() < k {
        if let Some(c) = split_largest(&init, rows) {
            init.push(c);
            continue;
        }
        let sim = |r: &Row| nearest(init.iter().map(Vec::as_slice), r).1;
        let mut c = vec![0.0; DIM];
        if let Some(far) = rows.iter().min_by(|a, b| sim(a).total_cmp(&sim(b))) {
            far.iter().for_each(|&(j, w)| c[usize::from(j)] = w);
        }
        init.push(c);
    }
    Array2::from_shape_vec((k, DIM), init.concat()).unwrap_or_else(|_| Array2::zeros((k, DIM)))
}

/// A centroid that splits the cluster of `centroids` holding the most `rows`: the unit-length
/// mean of its rows less like its centroid than its median row. `None` when no cluster has two
/// rows apart.
fn split_largest(centroids: &[Vec<f32>], rows: &[Row]) -> Option<Vec<f32>> {
    let assigned: Vec<(usize, f32)> = rows
        .iter()
        .map(|r| nearest(centroids.iter().map(Vec::as_slice), r))
        .collect();
    let mut counts = vec![0usize; centroids.len()];
    assigned.iter().for_each(|&(i, _)| counts[i] += 1);
    let big = (0..centroids.len()).max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))?;
    let mut sims: Vec<f32> = (assigned.iter())
        .filter(|(i, _)| *i == big)
        .map(|&(_, s)| s)
        .collect();
    sims.sort_by(f32::total_cmp);
    let median = *sims.get(sims.len() / 2)?;
    let mut c = vec![0.0f32; DIM];
    let mut n = 0;
    for (r, _) in rows
        .iter()
        .zip(&assigned)
        .filter(|(_, (i, s))| *i == big && *s < median)
    {
        r.iter().for_each(|&(j, w)| c[usize::from(j)] += w);
        n += 1;
    }
    let norm = c.iter().map(|x| x * x).sum::<f32>().sqrt();
    (n > 0 && norm > 0.0).then(|| c.iter().map(|x| x / norm).collect())
}

/// The centroid with the highest dot product with the sparse `row` (first on ties), and it.
fn nearest<'c>(centroids: impl Iterator<Item = &'c [f32]>, row: &[(u16, f32)]) -> (usize, f32) {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, c) in centroids.enumerate() {
        let dot: f32 = row
            .iter()
            .map(|&(j, w)| w * c.get(usize::from(j)).unwrap_or(&0.0))
            .sum();
        if dot > best.1 {
            best = (i, dot);
        }
    }
    best
}

/// The TOP_TERMS buckets where centroid `i` most exceeds the mean of the others.
fn top_buckets(centroids: &[Vec<f32>], i: usize) -> Vec<u16> {
    let others = (centroids.len().max(2) - 1) as f32;
    let score = |b: usize| {
        let sum: f32 = centroids.iter().map(|c| c[b]).sum();
        centroids[i][b] - (sum - centroids[i][b]) / others
    };
    let mut scored: Vec<(f32, usize)> = (0..DIM).map(|b| (score(b), b)).collect();
    scored.retain(|(s, _)| *s > 0.0);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    (scored.iter().take(TOP_TERMS))
        .map(|&(_, b)| b as u16)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Sentence pools of synthetic workflows: 0 math word problems, 1 SQL/code, 2 customer
    /// support, 3 cooking (the "new" one). `{N}` is a name, `{A}`/`{B}` numbers.
    const POOLS: [&str; 4] = [
        "If {N} has {A} apples and buys {B} more,|how many apples does {N} have in total?|\
         A train travels {A} miles per hour for {B} hours.|How many miles does it travel?|\
         {N} earns {A} dollars per week and saves {B} dollars each week.|How much is left?|\
         Each box holds {A} pencils and there are {B} boxes.|What is the total cost?",
        "SELECT email, total FROM orders WHERE id > {A} ORDER BY total DESC;|fix this query:|\
         fn total(x: i64) -> i64 { x * {A} } // the compiler rejects this function|in Rust|\
         def filter(rows): return [r for r in rows if r['total'] > {A}]|why does the query|\
         JOIN accounts ON accounts.id = orders.account_id return duplicate rows?|in Python",
        "Hi {N}, thank you for contacting support.|We are sorry your order #{A} arrived damaged.|\
         We have issued a refund to your account.|Your subscription renewal failed.|\
         Please update your payment details in account settings.|Sorry again, {N}!|\
         I understand your frustration with the delayed delivery.|It should arrive in {B} days.",
        "Preheat the oven to {A} degrees.|Whisk the flour, sugar and butter.|Serve warm.|\
         Bake the cake for {B} minutes.|Simmer the onions, garlic and carrots in olive oil.|\
         Season the soup with salt and pepper.|Add the broth and stir for {B} minutes.",
    ];

    /// (texts, labels): `per` tasks of each workflow, interleaved, each 3 to 5 random
    /// sentences of its pool with a random name and varying numbers.
    fn corpus(workflows: &[usize], per: u64, offset: u64) -> (Vec<String>, Vec<u32>) {
        let mut out = (Vec::new(), Vec::new());
        for i in offset..offset + per {
            for &w in workflows {
                let mut state = mix(i * 31 + w as u64 + 1);
                let mut next = |n: usize| {
                    state = mix(state.wrapping_add(0x9e37_79b9_7f4a_7c15));
                    (state % n as u64) as usize
                };
                let pool: Vec<&str> = POOLS[w].split('|').collect();
                let name = ["John", "Maria", "Aisha", "Chen", "Lucas", "Priya"][next(6)];
                let text = (0..3 + next(3))
                    .map(|_| pool[next(pool.len())])
                    .collect::<Vec<_>>();
                let (a, b) = ((i % 97 + 2).to_string(), (i % 13 + 3).to_string());
                let text = text
                    .join(" ")
                    .replace("{N}", name)
                    .replace("{A}", &a)
                    .replace("{B}", &b);
                out.0.push(text);
                out.1.push(w as u32);
            }
        }
        out
    }

    fn names(texts: &[String]) -> TermNames {
        let mut names = TermNames::default();
        texts.iter().for_each(|t| names.observe(t));
        names
    }

    fn fit(texts: &[String], k: usize, prev: Option<&ClusterModel>) -> ClusterModel {
        let sketches: Vec<Sketch> = texts.iter().map(|t| sketch(t)).collect();
        let opts = FitOptions {
            k,
            n_runs: 1, // a third of the time: dependencies are unoptimised in test builds
            ..FitOptions::default()
        };
        ClusterModel::fit(&sketches, &opts, prev).unwrap()
    }

    /// The id that most of a workflow's tasks are assigned to.
    fn majority(model: &ClusterModel, (texts, labels): &(Vec<String>, Vec<u32>), w: u32) -> u32 {
        let mut counts = BTreeMap::new();
        for (t, _) in texts.iter().zip(labels).filter(|(_, l)| **l == w) {
            *counts.entry(model.assign(&sketch(t))).or_insert(0) += 1;
        }
        counts
            .into_iter()
            .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
            .unwrap()
            .0
    }

    /// Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default).
    fn nmi(a: &[u32], b: &[u32]) -> f64 {
        let n = a.len() as f64;
        let (mut ca, mut cb, mut cab) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
        for (x, y) in a.iter().zip(b) {
            *ca.entry(x).or_insert(0.0) += 1.0;
            *cb.entry(y).or_insert(0.0) += 1.0;
            *cab.entry((x, y)).or_insert(0.0) += 1.0;
        }
        let h = |c: &BTreeMap<_, f64>| -c.values().map(|&v| v / n * (v / n).ln()).sum::<f64>();
        let mi: f64 = cab
            .iter()
            .map(|((x, y), &v)| v / n * (v * n / (ca[x] * cb[y])).ln())
            .sum();
        if h(&ca) + h(&cb) <= 0.0 {
            1.0
        } else {
            2.0 * mi / (h(&ca) + h(&cb))
        }
    }

    /// The id of a unigram.
    fn unigram(word: &str) -> u16 {
        let mut id = None;
        terms(word, (true, false), |i, _, _| id = Some(i));
        id.unwrap()
    }

    #[test]
    fn sketch_is_deterministic_bounded_and_ignores_case_and_punctuation_within() {
        let s = sketch("Hello, World! How are the SQL joins?");
        assert_eq!(s, sketch("hello world -- how are the sql JOINS?"));
        assert!(s.0.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
        assert_eq!(
            s.0.len(),
            7 + FORMAT_TERMS,
            "hello, world, sql, joins + 3 bigrams (how/are/the: stopwords), and the format"
        );
        // How a text ends is part of its format.
        assert_ne!(s, sketch("hello world -- how are the sql JOINS"));
        let long: String = (0..500).map(|i| format!("word{i} ")).collect();
        assert_eq!(sketch(&long).0.len(), SKETCH_TERMS);
        assert_eq!(sketch(&long), sketch(&long.to_uppercase()));
        // The most frequent unigram of what is read is kept, wherever it is in that prefix;
        // beyond MAX_SCAN_BYTES nothing counts. Unicode words are lowercased.
        let zebra = unigram("zebra");
        assert!(sketch("zebra lion").0.contains(&zebra));
        let short: String = (0..40).map(|i| format!("word{i} ")).collect();
        assert!(sketch(&format!("{short} zebra zebra")).0.contains(&zebra));
        assert!(!sketch(&format!("{long} zebra zebra")).0.contains(&zebra));
        assert_eq!(sketch("Ünïcode Wörter"), sketch("ünïcode wörter"));
        assert_eq!(
            sketch("请帮我写一个函数，计算两个数的和。").0.len(),
            3 + FORMAT_TERMS,
            "clauses as words"
        );
    }

    #[test]
    fn a_template_shows_in_the_format_terms_whatever_the_words() {
        let quiz = [
            "Which planet is the largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\nAnswer:",
            "Which court hears appeals first?\n(a) district\n(b) supreme\n(c) county\n(d) city\nAnswer:",
        ];
        let problem = "Tom has 3 apples and buys 5 more, then gives 2 away. How many are left?";
        let shared = |a: &str, b: &str| {
            sketch(a)
                .0
                .iter()
                .filter(|id| sketch(b).0.contains(id))
                .count()
        };
        // Of their words only "answer" is shared; their format is the same.
        assert_eq!(shared(quiz[0], quiz[1]), FORMAT_TERMS + 1);
        assert!(
            shared(quiz[0], problem) <= 2,
            "{}",
            shared(quiz[0], problem)
        );
        let f = Format::of(quiz[0]);
        assert_eq!((f.lines, f.items, f.end, f.last.1), (2, 4, b':', "Answer"));
        assert_eq!((f.first.1, f.numbers), ("Which", 0));
        let f = Format::of(problem);
        assert_eq!((f.lines, f.items, f.end, f.numbers), (0, 0, b'?', 2));
        for (line, item) in [
            ("A. Mars", true),
            ("  12) twelve", true),
            ("[c] county", true),
            ("- a bullet", true),
            ("• another", true),
            ("D:", true),
            ("Dr. Smith", false),
            ("123. too many digits", false),
            ("3.5 litres", false),
            ("", false),
        ] {
            assert_eq!(opens_item(line.as_bytes()), item, "{line:?}");
        }
        // The format terms are named for people, as words are.
        let names = names(&quiz.map(str::to_owned));
        let named: Vec<_> = Format::of(quiz[1])
            .ids()
            .filter_map(|id| names.name(usize::from(id) % DIM))
            .collect();
        assert!(
            named.contains(&"[4 items]")
                && named.contains(&"[ends \"answer\"]")
                && named.contains(&"[4–7 lines]")
                && named.contains(&"[0 numbers]"),
            "{named:?}"
        );
        // Featureless words make a featureless sketch, whatever the format.
        assert!(sketch("?\nA.\nB.\n").0.is_empty());
    }

    #[test]
    fn featureless_inputs_go_to_fallback() {
        let model = fit(&corpus(&[0, 1, 2], 40, 0).0, 3, None);
        let bytes: Vec<u8> = (0..4000u64).map(|i| (mix(i) >> 56) as u8).collect();
        let binary = String::from_utf8_lossy(&bytes).into_owned();
        for junk in [
            "",
            "!!!",
            "\0\u{1}",
            "a a a a",
            "apples apples",
            "1234567 99999",
            &binary,
        ] {
            assert!(sketch(junk).0.is_empty(), "{junk:?}");
            assert_eq!(model.assign(&sketch(junk)), FALLBACK, "{junk:?}");
        }
        // Hand-made sketches (a token may carry anything) never panic.
        for s in [
            Sketch(vec![u16::MAX; 40]),
            Sketch((0..64).collect()),
            Sketch(vec![7]),
        ] {
            model.assign(&s);
        }
        assert!(model.ids().all(|id| id != FALLBACK));
    }

    #[test]
    fn recovers_synthetic_workflows_deterministically_and_names_them() {
        let data = corpus(&[0, 1, 2], 150, 0);
        for k in [3, 4] {
            let model = fit(&data.0, k, None);
            let got: Vec<u32> = data.0.iter().map(|t| model.assign(&sketch(t))).collect();
            let score = nmi(&got, &data.1);
            assert!(score >= 0.8, "k={k}: NMI {score}");
            assert_eq!(model, fit(&data.0, k, None), "bit-identical refit");
        }
        let model = fit(&data.0, 3, None);
        let names = names(&data.0);
        let math = model.top_terms(majority(&model, &data, 0), &names);
        let words = [
            "apples", "how many", "many", "miles", "train", "money", "dollars", "total",
        ];
        assert!(math.iter().any(|t| words.contains(&t.as_str())), "{math:?}");
        assert!(model.top_terms(FALLBACK, &names).is_empty());
        assert!(
            (nmi(&[0, 0, 1, 1], &[5, 5, 7, 7]) - 1.0).abs() + nmi(&[0, 1, 0, 1], &[0, 0, 1, 1])
                < 1e-9
        );
    }

    #[test]
    fn ids_are_stable_across_refits_and_new_workflows_get_fresh_ids() {
        let data = corpus(&[0, 1, 2], 150, 0);
        let first = fit(&data.0, 3, None);
        let before: Vec<u32> = (0..3).map(|w| majority(&first, &data, w)).collect();
        // 80% overlap (tasks 30..180), in another order.
        let mut data2 = corpus(&[2, 0, 1], 150, 30);
        data2.0.reverse();
        data2.1.reverse();
        let second = fit(&data2.0, 3, Some(&first));
        assert_eq!(
            before,
            (0..3)
                .map(|w| majority(&second, &data2, w))
                .collect::<Vec<_>>()
        );
        // A fourth workflow arrives: the old ones keep their ids, the new one gets a fresh one.
        let data3 = corpus(&[0, 1, 2, 3], 150, 0);
        let third = fit(&data3.0, 4, Some(&second));
        let ids: Vec<u32> = (0..4).map(|w| majority(&third, &data3, w)).collect();
        assert_eq!(ids[..3], before[..]);
        assert!(ids[3] > *before.iter().max().unwrap() && !second.ids().any(|id| id == ids[3]));
        // It goes away again: the warm start fails over to k-means++ instead of diverging.
        assert_eq!(fit(&data.0, 4, Some(&third)).ids().count(), 4);
    }

    #[test]
    fn a_refit_that_grows_k_splits_clusters_instead_of_seeding_outliers() {
        // Two clusters for four workflows, then four: the two new centroids split the
        // crowded clusters, so every cluster holds a share of the tasks and they are the
        // workflows again (seeded from the farthest rows, the one-off tasks, this fails).
        let mut data = corpus(&[0, 1, 2, 3], 100, 0);
        // A few one-off tasks, each like no other: the rows farthest from every centroid.
        for i in 0..6u64 {
            let words: Vec<String> = (0..12).map(|j| format!("q{:x}", mix(i * 97 + j))).collect();
            data.0.push(words.join(" "));
            data.1.push(9);
        }
        let two = fit(&data.0, 2, None);
        let four = fit(&data.0, 4, Some(&two));
        let sizes: Vec<u32> = four.clusters().iter().map(|c| c.size).collect();
        assert!(sizes.iter().all(|&n| n >= 40), "{sizes:?}");
        let got: Vec<u32> = data.0.iter().map(|t| four.assign(&sketch(t))).collect();
        assert!(nmi(&got, &data.1) >= 0.8, "NMI {}", nmi(&got, &data.1));
    }

    #[test]
    fn a_fit_job_stepped_to_its_end_is_the_fit_cold_and_warm() {
        let sketches = |w: &[usize], offset| -> Vec<Sketch> {
            corpus(w, 120, offset).0.iter().map(|t| sketch(t)).collect()
        };
        let opts = FitOptions {
            k: 3,
            n_runs: 1,
            ..FitOptions::default()
        };
        let stepped = |s: &[Sketch], previous: Option<&ClusterModel>| {
            let mut job = FitJob::start(s, &opts, previous.map(|p| Arc::new(p.clone()))).unwrap();
            let mut steps = 0;
            loop {
                steps += 1;
                if let Some(done) = job.step() {
                    return (done.unwrap(), steps);
                }
            }
        };
        let first = sketches(&[0, 1, 2], 0);
        let cold = ClusterModel::fit(&first, &opts, None).unwrap();
        let (job_cold, steps) = stepped(&first, None);
        assert_eq!(job_cold, cold);
        assert!(steps > 1 && steps <= 51, "{steps} steps");
        let second = sketches(&[2, 0, 1], 30);
        let warm = ClusterModel::fit(&second, &opts, Some(&cold)).unwrap();
        assert_eq!(stepped(&second, Some(&cold)).0, warm);
        // A warm start that leaves a cluster empty starts again cold, as the fit does.
        let fewer = sketches(&[0, 1], 0);
        let opts4 = FitOptions {
            k: 4,
            ..opts.clone()
        };
        let four = ClusterModel::fit(&sketches(&[0, 1, 2, 3], 0), &opts4, None).unwrap();
        let mut job = FitJob::start(&fewer, &opts4, Some(Arc::new(four.clone()))).unwrap();
        let done = loop {
            if let Some(done) = job.step() {
                break done;
            }
        };
        assert_eq!(done, ClusterModel::fit(&fewer, &opts4, Some(&four)));
    }

    #[test]
    fn a_sparse_step_is_linfas_dense_step() {
        use linfa_clustering::KMeansInit;
        let sketches: Vec<Sketch> = corpus(&[0, 1, 2], 80, 0)
            .0
            .iter()
            .map(|t| sketch(t))
            .collect();
        let opts = FitOptions {
            k: 3,
            n_runs: 1,
            ..FitOptions::default()
        };
        let first = ClusterModel::fit(&sketches, &opts, None).unwrap();
        let job = FitJob::start(&sketches, &opts, Some(Arc::new(first))).unwrap();
        let init = job.centroids.clone().unwrap();
        let mut data = Array2::<f32>::zeros((job.rows.len(), DIM));
        for (row, mut dense) in job.rows.iter().zip(data.rows_mut()) {
            row.iter().for_each(|&(j, w)| dense[usize::from(j)] = w);
        }
        let linfa = KMeans::params_with_rng(3, Xoshiro256Plus::seed_from_u64(1))
            .init_method(KMeansInit::Precomputed(init.clone()))
            .max_n_iterations(1)
            .n_runs(1)
            .fit(&DatasetBase::from(data.view()))
            .unwrap();
        let ours = job.sparse_step(&init);
        let worst = (ours.iter().zip(linfa.centroids().iter()))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn too_few_tasks_and_clamped_k() {
        let sketches: Vec<Sketch> = corpus(&[0, 1], 5, 0).0.iter().map(|t| sketch(t)).collect();
        let opts = FitOptions {
            k: 1000,
            ..Default::default()
        };
        let err = ClusterModel::fit(&sketches, &opts, None).unwrap_err();
        assert_eq!(
            err,
            FitError::TooFewTasks {
                usable: 10,
                needed: 4 * MAX_K
            }
        );
        assert!(err.to_string().contains("too few"));
        let opts = FitOptions {
            k: 0,
            ..FitOptions::default()
        };
        let model = ClusterModel::fit(&sketches, &opts, None).unwrap();
        assert_eq!(model.ids().collect::<Vec<_>>(), vec![1]);
        let unnamed = model.top_terms(1, &TermNames::default());
        assert!(!unnamed.is_empty() && unnamed.iter().all(|t| t.starts_with('#')));
    }
}
