//! Feature extraction: task text (plus caller hints) → a sparse feature vector.
//!
//! Hashed word unigrams and bigrams (length-normalised) and a handful of hand-made signals
//! (length, digits, math operators, code, multi-step, demanding-task and small-talk cues,
//! multiple-choice layout, expected output length). Caller labels (workflow, task type) are not
//! features: a label the training data never saw would only add noise, and what a workflow
//! means for quality is learned online per workflow ([`crate::domain::learning`]). Pure CPU, no
//! allocation on the scoring path: features are handed to a visitor, so scoring is a dot
//! product computed while the text is read once.

/// Number of hashed buckets. The dense signals live at indices `HASH_DIMS..HASH_DIMS + SIGNALS`.
pub const HASH_DIMS: usize = 4096;
/// Number of hand-made dense signals.
pub const SIGNALS: usize = 14;
/// Total feature dimension.
pub const DIMS: usize = HASH_DIMS + SIGNALS;

/// Characters of plain prose added to a text's length before its digit, operator and
/// upper-case shares are taken: a short sentence's worth, so a few characters cannot make a
/// one-line question look like a page of arithmetic, while a paragraph's shares barely move.
const DENSITY_PRIOR_CHARS: f32 = 32.0;

/// Identifies this feature recipe inside model artifacts; bump when any rule below changes.
pub const FEATURE_VERSION: &str = "fx3-hash4096-uni-bi-sig14";

/// What the caller tells us besides the task text.
#[derive(Debug, Clone, Copy, Default)]
pub struct TaskInput<'a> {
    /// The task text or prompt.
    pub text: &'a str,
    /// The caller's workflow label (may be empty; not a feature, kept for callers' context).
    pub workflow: &'a str,
    /// Optional task-type hint (may be empty; not a feature).
    pub task_type: &'a str,
    /// Expected output tokens, 0 when unknown.
    pub expected_output_tokens: u32,
}

/// 64-bit FNV-1a offset basis and prime: the crate's one word hash (features, the data split,
/// cluster sketches).
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub(crate) const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// One byte of FNV-1a.
#[inline]
pub(crate) const fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

/// 64-bit FNV-1a of a string: the one hash of the crate's stable ids (features hash words
/// byte by byte with the same constants; the data split hashes record ids).
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(FNV_OFFSET, fnv_byte)
}

/// Final mixing so that nearby FNV states spread over the buckets (splitmix64 finaliser).
#[inline]
pub(crate) const fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[inline]
fn bucket(h: u64) -> u32 {
    // HASH_DIMS is a power of two; the mask keeps the low bits of a well-mixed hash.
    (mix(h) & (HASH_DIMS as u64 - 1)) as u32
}

const BIGRAM_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
const NUMBER_TOKEN: u64 = 0x5151_5151_5151_5151;

/// Words whose presence hints at several dependent steps.
const STEP_CUES: [&str; 21] = [
    "then",
    "after",
    "each",
    "total",
    "remaining",
    "left",
    "per",
    "times",
    "twice",
    "half",
    "percent",
    "every",
    "more",
    "less",
    "average",
    "rate",
    "altogether",
    "first",
    "second",
    "finally",
    "step",
];
/// Words that ask for demanding work: proofs, design, analysis, non-trivial code. The training
/// data (knowledge questions, school math) hardly has them; see `classifier` for how they count.
const DEMAND_CUES: [&str; 48] = [
    "prove",
    "proof",
    "derive",
    "design",
    "implement",
    "architecture",
    "analyze",
    "analyse",
    "analysis",
    "optimize",
    "optimise",
    "algorithm",
    "complexity",
    "tradeoffs",
    "justify",
    "rigorous",
    "rigorously",
    "theorem",
    "lemma",
    "concurrency",
    "concurrent",
    "distributed",
    "scalable",
    "refactor",
    "debug",
    "evaluate",
    "critique",
    "compare",
    "contrast",
    "comprehensive",
    "detailed",
    "thorough",
    "essay",
    "formal",
    "asymptotic",
    "invariant",
    "strategy",
    "simulate",
    "compiler",
    "parser",
    "fault",
    "latency",
    "consistency",
    "implications",
    "synthesize",
    "recommend",
    "assumptions",
    "generalize",
];
/// Small talk and acknowledgements.
const SOCIAL_CUES: [&str; 14] = [
    "hi", "hello", "hey", "thanks", "thank", "thx", "bye", "goodbye", "morning", "cheers", "ok",
    "okay", "lol", "yo",
];
/// Words and symbols typical of code.
const CODE_CUES: [&str; 18] = [
    "def", "return", "function", "class", "import", "const", "let", "var", "fn", "int", "void",
    "print", "printf", "struct", "public", "null", "true", "false",
];

/// Running counts of the hand-made signals while the text is scanned.
#[derive(Debug, Default)]
struct Signals {
    /// Characters other than white space: the length and the densities below do not change
    /// with spacing ("2+2" and "7 + 5" are the same kind of task).
    chars: usize,
    /// ASCII white-space bytes.
    blanks: usize,
    words: usize,
    digits: usize,
    numbers: usize,
    math_ops: usize,
    code_syms: usize,
    code_words: usize,
    step_words: usize,
    demand_words: usize,
    social_words: usize,
    questions: usize,
    newlines: usize,
    uppercase: usize,
    choice_lines: usize,
}

/// Calls `visit(index, value)` for every non-zero feature of the task. The same index may be
/// visited more than once; values add up.
pub fn visit_features(input: &TaskInput<'_>, mut visit: impl FnMut(u32, f32)) {
    let text = input.text;
    let mut sig = Signals::default();
    // Word hashes in order (numbers folded into one token); ~5 bytes per word.
    let mut words: Vec<u64> = Vec::with_capacity(text.len() / 5 + 1);
    if text.is_ascii() {
        scan_ascii(text, &mut sig, &mut words);
    } else {
        scan_unicode(text, &mut sig, &mut words);
    }

    // Hashed unigrams and bigrams, length-normalised.
    let weight = 1.0 / (sig.words.max(1) as f32).sqrt();
    let mut prev: Option<u64> = None;
    for &h in &words {
        visit(bucket(h), weight);
        if let Some(p) = prev {
            visit(
                bucket((p.rotate_left(23) ^ h ^ BIGRAM_SALT).wrapping_mul(FNV_PRIME)),
                weight,
            );
        }
        prev = Some(h);
    }

    // Shares of a short text are mostly chance ("What is 2+2?" is a fifth digits): each share
    // counts the text as DENSITY_PRIOR_CHARS characters of plain prose longer.
    let chars = sig.chars as f32 + DENSITY_PRIOR_CHARS;
    // ln_1p(0) is exactly 0: most counts are zero, so skip the call for them.
    let ln = |x: usize| if x == 0 { 0.0 } else { (x as f32).ln_1p() };
    let dense = [
        ln(sig.chars) / 10.0,
        ln(sig.words) / 8.0,
        sig.digits as f32 / chars,
        ln(sig.numbers) / 4.0,
        sig.math_ops as f32 / chars * 10.0,
        ln(sig.code_syms) / 4.0,
        ln(sig.code_words) / 3.0,
        ln(sig.step_words) / 3.0,
        ln(sig.questions) / 2.0,
        ln(sig.newlines) / 4.0,
        sig.uppercase as f32 / chars * 5.0,
        ln(sig.choice_lines) / 2.0 + ln(input.expected_output_tokens as usize) / 8.0,
        ln(sig.demand_words) / 2.0,
        ln(sig.social_words) / 2.0,
    ];
    for (i, v) in dense.into_iter().enumerate() {
        if v != 0.0 {
            visit((HASH_DIMS + i) as u32, v);
        }
    }
}

/// Byte classes, one table lookup per byte instead of a chain of range tests.
const WORD: u8 = 1;
const DIGIT: u8 = 2;

const fn byte_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] |= WORD;
        }
        if c.is_ascii_digit() {
            t[b] |= DIGIT;
        }
        b += 1;
    }
    t
}
static CLASSES: [u8; 256] = byte_classes();

/// Per-byte signals shared by both scanners, from one byte histogram: counting every byte
/// unconditionally and summing the classes afterwards has no data-dependent branch per byte
/// (the branchy per-byte `match` was the largest cost of feature extraction).
fn byte_signals(sig: &mut Signals, text: &str) {
    let mut hist = [0u32; 256];
    for &b in text.as_bytes() {
        hist[usize::from(b)] += 1;
    }
    let count = |set: &[u8]| -> usize { set.iter().map(|&b| hist[usize::from(b)] as usize).sum() };
    let range = |lo: u8, hi: u8| -> usize {
        hist[usize::from(lo)..=usize::from(hi)]
            .iter()
            .map(|&n| n as usize)
            .sum()
    };
    sig.digits = range(b'0', b'9');
    sig.math_ops = count(b"+-*/=^<>%");
    sig.code_syms = count(b"{};[]`()");
    sig.questions = count(b"?");
    sig.newlines = count(b"\n");
    // ASCII white space as `char::is_whitespace` has it (the Unicode scanner's count).
    sig.blanks = count(b" \t\n\x0b\x0c\r");
    sig.uppercase = range(b'A', b'Z');
    // Answer-choice layout: a line that starts with "A." … "D)".
    sig.choice_lines = text
        .split('\n')
        .filter(|line| matches!(line.as_bytes(), [b'A'..=b'D', b'.' | b')', ..]))
        .count();
}

/// Lower-case FNV-1a of a word, usable in constants.
const fn fnv_lower(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut h = FNV_OFFSET;
    let mut i = 0;
    while i < b.len() {
        h = (h ^ b[i].to_ascii_lowercase() as u64).wrapping_mul(FNV_PRIME);
        i += 1;
    }
    h
}

const fn hashes<const N: usize>(words: &[&str; N]) -> [u64; N] {
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        out[i] = fnv_lower(words[i]);
        i += 1;
    }
    out
}

/// Cue words compared by their 64-bit hash: a few integer compares per word instead of string
/// compares against every cue (the hot spot of feature extraction before).
const STEP_HASHES: [u64; STEP_CUES.len()] = hashes(&STEP_CUES);
const CODE_HASHES: [u64; CODE_CUES.len()] = hashes(&CODE_CUES);
const DEMAND_HASHES: [u64; DEMAND_CUES.len()] = hashes(&DEMAND_CUES);
const SOCIAL_HASHES: [u64; SOCIAL_CUES.len()] = hashes(&SOCIAL_CUES);

const STEP: u8 = 1;
const CODE: u8 = 2;
const DEMAND: u8 = 4;
const SOCIAL: u8 = 8;
/// Longest cue word, in bytes: longer words skip the filter.
const MAX_CUE_LEN: usize = 13;
const CUE_FILTER_BITS: u32 = 10;

/// Which cue lists have a word whose hash has these top bits: one lookup rules out almost every
/// word before the lists are searched.
const fn cue_filter() -> [u8; 1 << CUE_FILTER_BITS] {
    const fn mark(
        mut t: [u8; 1 << CUE_FILTER_BITS],
        hashes: &[u64],
        list: u8,
    ) -> [u8; 1 << CUE_FILTER_BITS] {
        let mut i = 0;
        while i < hashes.len() {
            t[(hashes[i] >> (64 - CUE_FILTER_BITS)) as usize] |= list;
            i += 1;
        }
        t
    }
    let t = mark([0; 1 << CUE_FILTER_BITS], &STEP_HASHES, STEP);
    let t = mark(t, &CODE_HASHES, CODE);
    let t = mark(t, &DEMAND_HASHES, DEMAND);
    mark(t, &SOCIAL_HASHES, SOCIAL)
}
static CUE_FILTER: [u8; 1 << CUE_FILTER_BITS] = cue_filter();

/// Counts a finished word's cues and returns its hash (numbers fold into one token).
#[inline]
fn finish_word(sig: &mut Signals, hash: u64, len: usize, digits_only: bool) -> u64 {
    if digits_only {
        sig.numbers += 1;
        return NUMBER_TOKEN;
    }
    if len <= MAX_CUE_LEN {
        let lists = CUE_FILTER[(hash >> (64 - CUE_FILTER_BITS)) as usize];
        if lists != 0 {
            sig.step_words += usize::from(lists & STEP != 0 && STEP_HASHES.contains(&hash));
            sig.code_words += usize::from(lists & CODE != 0 && CODE_HASHES.contains(&hash));
            sig.demand_words += usize::from(lists & DEMAND != 0 && DEMAND_HASHES.contains(&hash));
            sig.social_words += usize::from(lists & SOCIAL != 0 && SOCIAL_HASHES.contains(&hash));
        }
    }
    hash
}

/// Counts cue words and returns the hash of one word (numbers fold into one token).
fn word_hash(sig: &mut Signals, word: &str) -> u64 {
    let hash = word
        .bytes()
        .fold(FNV_OFFSET, |h, b| fnv_byte(h, b.to_ascii_lowercase()));
    let digits_only = word.bytes().all(|b| b.is_ascii_digit());
    finish_word(sig, hash, word.len(), digits_only)
}

/// One pass over ASCII text for the words (hashed as they are read), one for the signals.
fn scan_ascii(text: &str, sig: &mut Signals, words: &mut Vec<u64>) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    let mut i = 0;
    while i < n {
        if CLASSES[usize::from(bytes[i])] & WORD == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut hash = FNV_OFFSET;
        let mut digits_only = true;
        while let Some(&b) = bytes.get(i) {
            let class = CLASSES[usize::from(b)];
            if class & WORD == 0 {
                break;
            }
            // For ASCII letters and digits, setting bit 5 is `to_ascii_lowercase`.
            hash = fnv_byte(hash, b | 0x20);
            digits_only &= class & DIGIT != 0;
            i += 1;
        }
        words.push(finish_word(sig, hash, i - start, digits_only));
    }
    byte_signals(sig, text);
    sig.chars = n - sig.blanks;
    sig.words = words.len();
}

/// Any text: Unicode-aware words (`char::is_alphanumeric`), the same signals.
fn scan_unicode(text: &str, sig: &mut Signals, words: &mut Vec<u64>) {
    let mut in_word = false;
    for &b in text.as_bytes() {
        // Word count for the length weight: runs of ASCII alphanumerics or non-ASCII bytes.
        let alnum = b.is_ascii_alphanumeric() || b >= 0x80;
        if alnum && !in_word {
            sig.words += 1;
        }
        in_word = alnum;
    }
    byte_signals(sig, text);
    sig.chars = text.chars().filter(|c| !c.is_whitespace()).count();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        words.push(word_hash(sig, word));
    }
}

/// Collects the features of a task into a dense vector (training and tests; scoring uses
/// [`visit_features`] directly).
pub fn dense_features(input: &TaskInput<'_>) -> Vec<f32> {
    let mut v = vec![0.0f32; DIMS];
    visit_features(input, |i, x| v[i as usize] += x);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str) -> TaskInput<'_> {
        TaskInput {
            text,
            ..TaskInput::default()
        }
    }

    #[test]
    fn same_text_same_features_and_case_insensitive_words() {
        let a = dense_features(&input("Hello World"));
        let b = dense_features(&input("hello world"));
        assert_eq!(a[..HASH_DIMS], b[..HASH_DIMS]);
        assert_eq!(a, dense_features(&input("Hello World")));
    }

    #[test]
    fn numbers_share_one_token() {
        let a = dense_features(&input("pay 12 dollars"));
        let b = dense_features(&input("pay 99 dollars"));
        assert_eq!(a, b);
    }

    #[test]
    fn word_features_are_length_normalised() {
        let v = dense_features(&input("one two three four"));
        let hashed: f32 = v[..HASH_DIMS].iter().map(|x| x * x).sum();
        // 4 unigrams + 3 bigrams, each 1/sqrt(4): squared norm 7/4 unless buckets collide.
        assert!((hashed - 7.0 / 4.0).abs() < 0.6, "{hashed}");
    }

    #[test]
    fn signals_see_math_steps_and_choices() {
        let word_problem = "Tom has 3 apples. He buys 5 more each day, then gives half away. \
                            How many apples are left in total after 4 days?";
        let v = dense_features(&input(word_problem));
        let sig = &v[HASH_DIMS..];
        assert!(sig[3] > 0.0, "numbers");
        assert!(sig[7] > 0.3, "step cues: {}", sig[7]);
        let mc = dense_features(&input("Which?\nA. x\nB. y\nC. z\nD. w\nAnswer:"));
        assert!(mc[HASH_DIMS + 11] > 0.5, "choice lines");
    }

    #[test]
    fn labels_are_not_features_but_the_length_hint_is() {
        let plain = dense_features(&input("hi"));
        let labelled = dense_features(&TaskInput {
            text: "hi",
            workflow: "mmlu/anatomy",
            task_type: "chat",
            expected_output_tokens: 0,
        });
        assert_eq!(plain, labelled);
        let hinted = dense_features(&TaskInput {
            expected_output_tokens: 100,
            ..input("hi")
        });
        assert_ne!(plain, hinted);
    }

    #[test]
    fn demanding_and_small_talk_cues_are_counted() {
        let v = dense_features(&input(
            "Design a distributed, fault tolerant queue and prove its invariant.",
        ));
        assert!(
            v[HASH_DIMS + 12] > 0.5,
            "demand cues: {}",
            v[HASH_DIMS + 12]
        );
        let v = dense_features(&input("hi, thanks!"));
        assert!(
            v[HASH_DIMS + 13] > 0.5,
            "social cues: {}",
            v[HASH_DIMS + 13]
        );
        assert_eq!(v[HASH_DIMS + 12], 0.0);
    }

    #[test]
    fn ascii_fast_path_matches_the_unicode_scanner() {
        for text in [
            "Tom has 3 apples.\nA. one\nB) two\nThen he eats 2; how many are left?",
            "def f(x): return x*2 + 1  # code {a[0]}",
            "  leading and trailing  ",
            "",
            "UPPER lower 12 34x x56",
            "tabs\tand\x0bvertical\x0c\r\n blanks",
        ] {
            let (mut a, mut b) = (Signals::default(), Signals::default());
            let (mut wa, mut wb) = (Vec::new(), Vec::new());
            scan_ascii(text, &mut a, &mut wa);
            scan_unicode(text, &mut b, &mut wb);
            assert_eq!(wa, wb, "{text:?}");
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text:?}");
        }
    }

    #[test]
    fn spacing_changes_no_feature() {
        assert_eq!(
            dense_features(&input("What is 2+2?")),
            dense_features(&input("What is 7 + 5?"))
        );
        assert_eq!(
            dense_features(&input("x=1;\ny=2")),
            dense_features(&input("  x = 1;\n   y = 2  "))
        );
    }

    #[test]
    fn empty_and_unicode_text_do_not_panic() {
        let v = dense_features(&input(""));
        assert!(v.iter().all(|x| *x == 0.0));
        let v = dense_features(&input("Größe ÄÖÜ 東京 🚀 ?"));
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
