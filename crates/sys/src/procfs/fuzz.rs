//! Property tests (proptest) for every /proc parser: real samples edited
//! line by line and token by token (numbers made huge, negative, empty;
//! lines dropped, duplicated, cut), and arbitrary text. Each parser must
//! return `Ok` or a `ProcError`, never panic. A fixed number of cases per
//! test (`CASES`), a few seconds in a debug build.

use proptest::prelude::*;

use super::*;

/// Cases per property test.
const CASES: u32 = 20_000;

/// A parser under test: its name, a real sample, and a call of it.
type Parser = (&'static str, &'static str, fn(&str));

/// Every text parser, by name.
fn text_parsers() -> Vec<Parser> {
    fn run<T>(f: fn(&str) -> Result<T, ProcError>) -> impl Fn(&str) {
        move |t| {
            let _ = f(t);
        }
    }
    macro_rules! p {
        ($name:literal, $sample:expr, $f:expr) => {
            ($name, $sample, |t: &str| (run($f))(t))
        };
    }
    vec![
        p!("smaps", include_str!("testdata/smaps.txt"), parse_smaps),
        p!("maps", include_str!("testdata/maps.txt"), parse_maps),
        p!("stat", include_str!("testdata/stat.txt"), parse_stat),
        p!("status", include_str!("testdata/status.txt"), parse_status),
        p!("limits", include_str!("testdata/limits.txt"), parse_limits),
        p!("mountinfo", include_str!("testdata/mountinfo.txt"), parse_mountinfo),
        p!("timers", include_str!("testdata/timers.txt"), parse_timers),
        p!("personality", "00400000\n", parse_personality),
        p!("timer_slack", "50000\n", parse_timer_slack),
        p!("children", "812 815 9001 \n", parse_children),
        p!(
            "epoll_tfd",
            "tfd:        4 events: 8000001c data:                4  pos:0 ino:24ba sdev:f",
            parse_epoll_tfd
        ),
        p!(
            "inotify_wd",
            "inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000",
            parse_inotify_wd
        ),
        ("fdinfo_epoll", include_str!("testdata/fdinfo_epoll.txt"), fdinfo_all),
        ("fdinfo_inotify", include_str!("testdata/fdinfo_inotify.txt"), fdinfo_all),
        ("fdinfo_eventfd", include_str!("testdata/fdinfo_eventfd.txt"), fdinfo_all),
        ("fdinfo_timerfd", include_str!("testdata/fdinfo_timerfd.txt"), fdinfo_all),
        ("fdinfo_signalfd", include_str!("testdata/fdinfo_signalfd.txt"), fdinfo_all),
        ("fdinfo_pipe", include_str!("testdata/fdinfo_pipe.txt"), fdinfo_all),
        ("unescape_octal", "/a\\040b\\011c\\134d\\0\\777\\", |t| {
            let _ = unescape_octal(t);
        }),
        ("resource_of_row", "Max open files", |t| {
            let _ = resource_of_row(t);
        }),
    ]
}

/// parse_fdinfo and every accessor on its result.
fn fdinfo_all(t: &str) {
    if let Ok(fi) = parse_fdinfo(t) {
        let _ = fi.epoll_tfds();
        let _ = fi.inotify_wds();
        let _ = fi.eventfd();
        let _ = fi.timerfd();
        let _ = fi.signalfd_mask();
    }
}

/// Tokens that break naive number parsing.
const NASTY: &[&str] = &[
    "",
    "-1",
    "0",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "ffffffffffffffffff",
    "-",
    "(",
    ")",
    ":",
    "\t",
    " kB",
    "\u{fffd}",
    "0x",
    "1-",
    "-1-2",
];

#[derive(Debug, Clone)]
enum Edit {
    /// Replace token `t` of line `l` with a nasty one.
    Token(usize, usize, usize),
    DropLine(usize),
    DupLine(usize),
    /// Cut the text at a byte offset (on a char boundary).
    Cut(usize),
    /// Replace a line with arbitrary text.
    Line(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), any::<usize>()).prop_map(|(l, t, n)| Edit::Token(l, t, n)),
        any::<usize>().prop_map(Edit::DropLine),
        any::<usize>().prop_map(Edit::DupLine),
        any::<usize>().prop_map(Edit::Cut),
        (any::<usize>(), "[ -~\t]{0,60}").prop_map(|(l, s)| Edit::Line(l, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in edits {
        let n = lines.len();
        match e {
            Edit::Token(l, t, k) if n > 0 => {
                let line = &mut lines[l % n];
                let mut toks: Vec<String> = line.split(' ').map(String::from).collect();
                let i = t % toks.len();
                toks[i] = NASTY[k % NASTY.len()].to_string();
                *line = toks.join(" ");
            }
            Edit::DropLine(l) if n > 0 => {
                lines.remove(l % n);
            }
            Edit::DupLine(l) if n > 0 => {
                let d = lines[l % n].clone();
                lines.insert(l % n, d);
            }
            Edit::Cut(p) => {
                let mut joined = lines.join("\n");
                let mut at = p % (joined.len() + 1);
                while !joined.is_char_boundary(at) {
                    at -= 1;
                }
                joined.truncate(at);
                lines = joined.lines().map(String::from).collect();
            }
            Edit::Line(l, s) if n > 0 => lines[l % n] = s.clone(),
            _ => {}
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Every text parser on an edited real sample.
    #[test]
    fn text_parsers_survive_edited_samples(
        which in any::<usize>(),
        edits in proptest::collection::vec(edit(), 1..5),
    ) {
        let all = text_parsers();
        let (_, sample, f) = all[which % all.len()];
        f(&apply(sample, &edits));
    }

    /// Every text parser on arbitrary text.
    #[test]
    fn text_parsers_survive_arbitrary_text(which in any::<usize>(), t in "\\PC{0,300}") {
        let all = text_parsers();
        (all[which % all.len()].2)(&t);
    }

    /// The binary parser (auxv) on arbitrary bytes: lengths that are not
    /// whole records give errors, not panics.
    #[test]
    fn binary_parsers_survive_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_auxv(&b);
    }
}
