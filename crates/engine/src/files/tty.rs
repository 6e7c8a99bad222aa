//! Terminals: pty pairs (a /dev/ptmx master and its /dev/pts/N slave) held
//! by the tree, with their termios (locked ones too), window size, lock
//! state, packet mode and exclusive mode; /dev/tty fds of such a pty; the
//! session a pty slave is the controlling terminal of, and its foreground
//! group (CRIU's TTY files and tty-info.img).
//!
//! At restore a new pair is allocated, with the dumped index when it is
//! free (another one otherwise: the slave is reached from the master, by
//! TIOCGPTN or TIOCGPTPEER, not by its old path). The session leader makes
//! the new slave its controlling terminal (TIOCSCTTY) before it forks its
//! children, and the foreground group is set again (TIOCSPGRP).
//! With --shell-job, the terminal of the shell (one the tree holds no
//! master of) is the restoring crust's: see [`super::reg::ShellTerminal`];
//! when the tree's root group was the foreground job, it is made the
//! foreground of crust's terminal again.
//!
//! Data queued in a pty (written to one side, not read yet from the other)
//! is not kept, as in CRIU: a dump that finds some refuses, naming it.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crust_image::{names, pb, ImageKind};
use crust_sys::procfs;
use crust_sys::tty as ktty;

use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::ImageDir;

/// /dev/tty, /dev/console and /dev/ptmx.
const TTYAUX_MAJOR: u32 = 5;
/// Virtual consoles and serial ports (/dev/ttyN, /dev/ttySN).
const TTY_MAJOR: u32 = 4;
/// Majors of unix98 pty slaves.
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// Which end of a pty an fd is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Master,
    Slave,
    /// /dev/tty, standing for the slave.
    Ctty,
}

fn major(rdev: u64) -> u32 {
    nix::sys::stat::major(rdev) as u32
}

fn minor(rdev: u64) -> u32 {
    nix::sys::stat::minor(rdev) as u32
}

fn is_chr(st: &nix::sys::stat::FileStat) -> bool {
    (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
}

fn is_ptmx(rdev: u64) -> bool {
    major(rdev) == TTYAUX_MAJOR && minor(rdev) == 2
}

fn is_dev_tty(rdev: u64) -> bool {
    major(rdev) == TTYAUX_MAJOR && minor(rdev) == 0
}

/// The index of a pty slave device.
fn slave_index(rdev: u64) -> Option<u32> {
    PTS_MAJORS
        .contains(&major(rdev))
        .then(|| (major(rdev) - PTS_MAJORS.start()) * 256 + minor(rdev))
}

/// What a terminal crust does not restore is, for refusals.
pub fn describe_unsupported(f: &OpenFd) -> String {
    let rdev = f.stat.st_rdev;
    let (ma, mi) = (major(rdev), minor(rdev));
    let hint =
        "; dump with --shell-job (-j) if it is the terminal of the shell that started the task";
    if let Some(i) = slave_index(rdev) {
        format!("a terminal: the pty slave /dev/pts/{i}, whose master no process of the dumped tree holds{hint}")
    } else if is_dev_tty(rdev) {
        format!("a terminal: /dev/tty of a terminal that is not a pty of the dumped tree{hint}")
    } else if ma == TTYAUX_MAJOR && mi == 1 {
        format!("a terminal: the system console (/dev/console){hint}")
    } else if ma == TTY_MAJOR && mi < 64 {
        format!("a terminal: the virtual console /dev/tty{mi}{hint}")
    } else if ma == TTY_MAJOR {
        format!(
            "a terminal: the serial port /dev/ttyS{}{hint}",
            mi.saturating_sub(64)
        )
    } else {
        format!("a terminal of another tty driver (device {ma}:{mi}){hint}")
    }
}

/// Whether `f` is a terminal of a driver crust does not restore (for
/// refusals: only ptys of the tree are restored).
pub fn is_terminal(f: &OpenFd) -> bool {
    is_chr(&f.stat) && nix::unistd::isatty(f.file.as_raw_fd()).unwrap_or(false)
}

fn termios_entry(t: &ktty::Termios) -> pb::TermiosEntry {
    pb::TermiosEntry {
        c_iflag: t.iflag,
        c_oflag: t.oflag,
        c_cflag: t.cflag,
        c_lflag: t.lflag,
        c_line: t.line as u32,
        c_ispeed: t.ispeed,
        c_ospeed: t.ospeed,
        c_cc: t.cc.iter().map(|&c| c as u32).collect(),
    }
}

fn winsize_entry(w: &ktty::Winsize) -> pb::WinsizeEntry {
    pb::WinsizeEntry {
        ws_row: w.rows as u32,
        ws_col: w.cols as u32,
        ws_xpixel: w.xpixel as u32,
        ws_ypixel: w.ypixel as u32,
    }
}

/// One pty pair of the dumped tree.
struct PairDump {
    /// A duplicate of its master.
    master: OwnedFd,
    /// A duplicate of one of its slave files, if the tree holds one.
    slave: Option<OwnedFd>,
    /// tty-info ids of its master, slave and /dev/tty, once dumped.
    infos: HashMap<&'static str, u32>,
}

/// The terminals of a dump: the tree's pty pairs, found before any fd is
/// dumped, and the tty-info entries written so far.
#[derive(Default)]
pub struct DumpState {
    pairs: BTreeMap<u32, PairDump>,
    infos: Vec<pb::TtyInfoEntry>,
}

impl DumpState {
    /// Find the pty pairs whose master a process of the frozen tree
    /// (`procs`, root first) holds, and check the controlling terminals:
    /// a pty of the tree must be the controlling terminal of a session led
    /// by a live process of the tree, and a process's controlling terminal
    /// must be a pty of the tree, or with `shell_job` the shell's (which
    /// is then recorded with its foreground group).
    pub fn scan(procs: &[&procfs::Stat], shell_job: bool) -> Result<DumpState> {
        let mut masters: BTreeMap<u32, OwnedFd> = BTreeMap::new();
        let mut slaves: BTreeMap<u32, OwnedFd> = BTreeMap::new();
        for st in procs {
            let pid = st.pid;
            let fds = procfs::list_fds(pid).ctx(|| format!("listing the fds of {pid}"))?;
            let mut pidfd = None;
            for fd in fds {
                let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) else {
                    continue;
                };
                let link = link.to_string_lossy();
                if link != "/dev/ptmx" && !link.starts_with("/dev/pts/") {
                    continue;
                }
                if pidfd.is_none() {
                    pidfd = Some(
                        crust_sys::pidfd::pidfd_open(pid).ctx(|| format!("pidfd_open({pid})"))?,
                    );
                }
                let file = crust_sys::pidfd::pidfd_getfd(pidfd.as_ref().expect("opened"), fd)
                    .ctx(|| format!("pidfd_getfd of fd {fd} of {pid}"))?;
                let stat = nix::sys::stat::fstat(file.as_raw_fd())
                    .ctx(|| format!("fstat of fd {fd} of {pid}"))?;
                if !is_chr(&stat) {
                    continue;
                }
                if is_ptmx(stat.st_rdev) {
                    let i =
                        ktty::pty_index(&file).ctx(|| format!("TIOCGPTN on fd {fd} of {pid}"))?;
                    masters.entry(i).or_insert(file);
                } else if let Some(i) = slave_index(stat.st_rdev) {
                    slaves.entry(i).or_insert(file);
                }
            }
        }
        let mut out = DumpState::default();
        for (i, master) in masters {
            out.pairs.insert(
                i,
                PairDump {
                    master,
                    slave: slaves.remove(&i),
                    infos: HashMap::new(),
                },
            );
        }
        let root = procs.first().map(|s| s.pid).unwrap_or(0);
        let leaders: HashMap<i32, &procfs::Stat> = procs
            .iter()
            .filter(|s| s.session == s.pid)
            .map(|s| (s.pid, *s))
            .collect();
        for (i, p) in &out.pairs {
            let sid = ktty::session_of(&p.master)
                .ctx(|| format!("TIOCGSID through the master of /dev/pts/{i}"))?;
            if let Some(sid) = sid.filter(|&s| s > 0) {
                if !leaders.contains_key(&sid) {
                    return Err(Error::Unsupported {
                        pid: root,
                        what: format!(
                            "the pty /dev/pts/{i}, which is the controlling terminal of session {sid}, whose leader is not in the dumped tree"
                        ),
                    });
                }
            }
        }
        for st in procs {
            if st.tty_nr == 0 {
                continue;
            }
            let rdev = st.tty_nr as u32 as u64;
            if slave_index(rdev).is_some_and(|i| out.pairs.contains_key(&i)) {
                continue;
            }
            if shell_job {
                continue;
            }
            return Err(Error::Unsupported {
                pid: st.pid,
                what: format!(
                    "its controlling terminal (device {}:{}), which is not a pty whose master is in the dumped tree; dump with --shell-job (-j) if it is the terminal of the shell that started the task",
                    major(rdev),
                    minor(rdev)
                ),
            });
        }
        if shell_job {
            if let Some(r) = procs.first().filter(|r| r.tty_nr != 0) {
                let rdev = r.tty_nr as u32 as u64;
                if !slave_index(rdev).is_some_and(|i| out.pairs.contains_key(&i)) {
                    let id = out.next_id();
                    out.infos.push(pb::TtyInfoEntry {
                        id,
                        r#type: pb::TtyType::ExtTty as i32,
                        sid: r.session.max(0) as u32,
                        pgrp: r.tpgid.max(0) as u32,
                        rdev: rdev as u32,
                        ..Default::default()
                    });
                }
            }
        }
        Ok(out)
    }

    fn next_id(&self) -> u32 {
        self.infos.len() as u32 + 1
    }

    /// Which pair and side `f` is, if it is a pty of the tree.
    fn locate(&self, f: &OpenFd) -> Option<(u32, Side)> {
        if !is_chr(&f.stat) {
            return None;
        }
        let rdev = f.stat.st_rdev;
        let (i, side) = if is_ptmx(rdev) {
            (ktty::pty_index(&f.file).ok()?, Side::Master)
        } else if let Some(i) = slave_index(rdev) {
            (i, Side::Slave)
        } else if is_dev_tty(rdev) {
            (slave_index(ktty::real_device(&f.file).ok()?)?, Side::Ctty)
        } else {
            return None;
        };
        self.pairs.contains_key(&i).then_some((i, side))
    }

    /// The tty-info id of `side` of pair `i`, dumped at first use.
    fn info_id(&mut self, i: u32, side: Side, f: &OpenFd) -> Result<u32> {
        let key = match side {
            Side::Master => "master",
            Side::Slave => "slave",
            Side::Ctty => "ctty",
        };
        if let Some(&id) = self.pairs[&i].infos.get(key) {
            return Ok(id);
        }
        let id = self.next_id();
        let p = &self.pairs[&i];
        let refuse = |what: String| Error::Unsupported { pid: f.pid, what };
        let at = |what: &str| format!("{what} of /dev/pts/{i} ({} of {})", f.describe(), f.pid);
        let m = &p.master;
        let sid = ktty::session_of(m)
            .ctx(|| at("TIOCGSID"))?
            .filter(|&s| s > 0)
            .unwrap_or(0);
        let pgrp = if sid != 0 {
            ktty::foreground_group(m).ctx(|| at("TIOCGPGRP"))?.max(0)
        } else {
            0
        };
        let mut e = pb::TtyInfoEntry {
            id,
            r#type: pb::TtyType::Pty as i32,
            locked: ktty::pty_locked(m).ctx(|| at("TIOCGPTLCK"))?,
            packet_mode: ktty::packet_mode(m).ctx(|| at("TIOCGPKT"))?,
            sid: sid as u32,
            pgrp: pgrp as u32,
            rdev: f.stat.st_rdev as u32,
            pty: Some(pb::TtyPtyEntry { index: i }),
            dev: Some(f.stat.st_dev as u32),
            ..Default::default()
        };
        let end: Option<&OwnedFd> = match side {
            Side::Master => Some(m),
            Side::Slave => Some(p.slave.as_ref().unwrap_or(&f.file)),
            Side::Ctty => None,
        };
        if let Some(end) = end {
            let queued = ktty::bytes_to_read(end).ctx(|| at("FIONREAD"))?;
            if queued > 0 {
                let dir = match side {
                    Side::Master => "written to its slave and not yet read from its master",
                    _ => "written to its master and not yet read from its slave",
                };
                return Err(refuse(format!(
                    "{}: the pty /dev/pts/{i} holds {queued} bytes {dir}; crust does not keep data queued in a terminal (read it first)",
                    f.describe()
                )));
            }
            let t = ktty::get_termios(end).ctx(|| at("TCGETS2"))?;
            if t.line != 0 {
                return Err(refuse(format!(
                    "{}: the pty /dev/pts/{i} uses line discipline {}, not N_TTY (not supported)",
                    f.describe(),
                    t.line
                )));
            }
            e.termios = Some(termios_entry(&t));
            e.termios_locked = Some(termios_entry(
                &ktty::get_locked_termios(end).ctx(|| at("TIOCGLCKTRMIOS"))?,
            ));
            e.winsize = Some(winsize_entry(
                &ktty::get_winsize(end).ctx(|| at("TIOCGWINSZ"))?,
            ));
            e.exclusive = ktty::exclusive(end).ctx(|| at("TIOCGEXCL"))?;
            let st = nix::sys::stat::fstat(end.as_raw_fd()).ctx(|| at("fstat"))?;
            if side == Side::Slave {
                e.uid = Some(st.st_uid);
                e.gid = Some(st.st_gid);
            } else if p.slave.is_none() {
                // No slave open in the tree: was one open before?
                let mut pfd = [nix::poll::PollFd::new(
                    m.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).ctx(|| at("poll"))?;
                let hup = pfd[0]
                    .revents()
                    .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP));
                e.crust_slave_hung_up = Some(hup);
            }
        } else {
            e.r#type = pb::TtyType::Ctty as i32;
        }
        self.infos.push(e);
        self.pairs
            .get_mut(&i)
            .expect("present")
            .infos
            .insert(key, id);
        Ok(id)
    }

    /// Write tty-info.img (if there is any terminal).
    pub fn finish(self, dir: &ImageDir) -> Result<()> {
        if self.infos.is_empty() {
            return Ok(());
        }
        dir.write(names::TTY_INFO, ImageKind::TtyInfo, &self.infos)
    }
}

/// Masters, slaves and /dev/tty of the tree's pty pairs.
pub struct Pty;

impl FileKind for Pty {
    fn claims(&self, f: &OpenFd, ctx: &DumpCtx) -> bool {
        ctx.ttys.locate(f).is_some()
    }

    fn dump(&self, f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry> {
        let (i, side) = ctx.ttys.locate(f).expect("claimed");
        let info = ctx.ttys.info_id(i, side, f)?;
        Ok(pb::FileEntry {
            r#type: fd_type::TTY,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info,
                flags: f.info.flags & !(libc::O_CLOEXEC as u32),
                fown: pb::FownEntry::default(),
                regf_id: None,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::TTY
    }

    fn open(&self, e: &pb::FileEntry, ctx: &mut OpenCtx) -> Result<OwnedFd> {
        let t = e
            .tty
            .as_ref()
            .ok_or_else(|| bad(format!("TTY file id {} has no tty entry", e.id)))?;
        let dir = ctx.dir;
        ctx.ttys.open(t, dir)
    }
}

fn bad(what: String) -> Error {
    Error::BadImage {
        file: names::FILES.into(),
        what,
    }
}

fn bad_info(what: String) -> Error {
    Error::BadImage {
        file: names::TTY_INFO.into(),
        what,
    }
}

/// A pty pair made again for the restore.
struct PairOpen {
    master: OwnedFd,
    /// crust's own slave file, kept for TIOCSCTTY and /dev/tty until the
    /// restore is over.
    slave: Option<OwnedFd>,
    locked: bool,
    slave_exclusive: bool,
}

/// The terminals of a restore: tty-info.img and the pairs made so far, by
/// dumped index.
#[derive(Default)]
pub struct OpenState {
    infos: Option<HashMap<u32, pb::TtyInfoEntry>>,
    pairs: HashMap<u32, PairOpen>,
}

fn termios_of(e: &pb::TermiosEntry) -> Result<ktty::Termios> {
    if e.c_cc.len() > 19 || e.c_cc.iter().any(|&c| c > 0xff) || e.c_line > 0xff {
        return Err(bad_info(
            "a termios entry has more than 19 control characters or values above 255".into(),
        ));
    }
    let mut cc = [0u8; 19];
    for (d, s) in cc.iter_mut().zip(&e.c_cc) {
        *d = *s as u8;
    }
    Ok(ktty::Termios {
        iflag: e.c_iflag,
        oflag: e.c_oflag,
        cflag: e.c_cflag,
        lflag: e.c_lflag,
        line: e.c_line as u8,
        cc,
        ispeed: e.c_ispeed,
        ospeed: e.c_ospeed,
    })
}

fn winsize_of(e: &pb::WinsizeEntry) -> Result<ktty::Winsize> {
    let f = |v: u32| {
        u16::try_from(v).map_err(|_| bad_info(format!("window size value {v} is above 65535")))
    };
    Ok(ktty::Winsize {
        rows: f(e.ws_row)?,
        cols: f(e.ws_col)?,
        xpixel: f(e.ws_xpixel)?,
        ypixel: f(e.ws_ypixel)?,
    })
}

/// How many extra masters crust opens, at most, to get a pair its dumped
/// index back.
const MAX_INDEX_TRIES: u32 = 256;

/// Open /dev/ptmx, trying to get a pair with index `want`: devpts hands
/// out the lowest free index, so masters with lower ones are held open
/// until `want` comes or is passed (then it is taken: another is used).
fn open_ptmx(want: u32) -> Result<OwnedFd> {
    let open = || -> Result<(OwnedFd, u32)> {
        let f: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open("/dev/ptmx")
            .ctx(|| "opening /dev/ptmx".into())?
            .into();
        let i = ktty::pty_index(&f).ctx(|| "TIOCGPTN on a new pty".into())?;
        Ok((f, i))
    };
    use std::os::unix::fs::OpenOptionsExt;
    let mut extra = Vec::new();
    loop {
        let (f, i) = open()?;
        if i >= want || extra.len() as u32 >= MAX_INDEX_TRIES {
            if i != want {
                tracing::info!(
                    dumped = want,
                    restored = i,
                    "pty index taken: restored under another"
                );
            }
            return Ok(f);
        }
        extra.push(f);
    }
}

impl OpenState {
    fn load(&mut self, dir: &ImageDir) -> Result<&HashMap<u32, pb::TtyInfoEntry>> {
        if self.infos.is_none() {
            let mut m = HashMap::new();
            if dir.file(names::TTY_INFO).exists() {
                for e in dir.read::<pb::TtyInfoEntry>(names::TTY_INFO, ImageKind::TtyInfo)? {
                    if m.insert(e.id, e).is_some() {
                        return Err(bad_info("an id is listed twice".into()));
                    }
                }
            }
            self.infos = Some(m);
        }
        Ok(self.infos.as_ref().expect("loaded"))
    }

    fn infos(&self) -> impl Iterator<Item = &pb::TtyInfoEntry> {
        self.infos.iter().flat_map(|m| m.values())
    }

    /// The tty-info entry of a side of pty `i` (master: rdev of /dev/ptmx).
    fn pty_info(&self, i: u32, master: bool) -> Option<&pb::TtyInfoEntry> {
        self.infos().find(|e| {
            e.r#type == pb::TtyType::Pty as i32
                && e.pty.as_ref().map(|p| p.index) == Some(i)
                && is_ptmx(e.rdev as u64) == master
        })
    }

    /// Make pair `i` again with the dumped state of both sides.
    fn pair(&mut self, i: u32) -> Result<&mut PairOpen> {
        if !self.pairs.contains_key(&i) {
            let mi = self
                .pty_info(i, true)
                .cloned()
                .ok_or_else(|| bad_info(format!("no entry for the master of pty {i}")))?;
            let si = self.pty_info(i, false).cloned();
            let at = |what: &str| format!("{what} of the new pty for /dev/pts/{i}");
            let master = open_ptmx(i)?;
            ktty::set_pty_locked(&master, false).ctx(|| at("unlocking"))?;
            if let Some(t) = &mi.termios {
                ktty::set_termios(&master, &termios_of(t)?).ctx(|| at("TCSETS2 on the master"))?;
            }
            if let Some(t) = &mi.termios_locked {
                ktty::set_locked_termios(&master, &termios_of(t)?)
                    .ctx(|| at("TIOCSLCKTRMIOS on the master"))?;
            }
            if let Some(w) = &mi.winsize {
                ktty::set_winsize(&master, &winsize_of(w)?).ctx(|| at("TIOCSWINSZ"))?;
            }
            ktty::set_packet_mode(&master, mi.packet_mode).ctx(|| at("TIOCPKT"))?;
            let need_slave = si.is_some()
                || mi.sid != 0
                || mi.crust_slave_hung_up == Some(true)
                || self.infos().any(|e| {
                    e.r#type == pb::TtyType::Ctty as i32
                        && e.pty.as_ref().map(|p| p.index) == Some(i)
                });
            let slave = if need_slave {
                let s = ktty::open_slave(&master, libc::O_RDWR | libc::O_CLOEXEC)
                    .ctx(|| at("opening the slave"))?;
                if let Some(si) = &si {
                    if let Some(t) = &si.termios {
                        ktty::set_termios(&s, &termios_of(t)?)
                            .ctx(|| at("TCSETS2 on the slave"))?;
                    }
                    if let Some(t) = &si.termios_locked {
                        ktty::set_locked_termios(&s, &termios_of(t)?)
                            .ctx(|| at("TIOCSLCKTRMIOS on the slave"))?;
                    }
                    if si.uid.is_some() || si.gid.is_some() {
                        nix::unistd::fchown(
                            s.as_raw_fd(),
                            si.uid.map(nix::unistd::Uid::from_raw),
                            si.gid.map(nix::unistd::Gid::from_raw),
                        )
                        .ctx(|| at("fchown of the slave"))?;
                    }
                }
                Some(s)
            } else {
                None
            };
            self.pairs.insert(
                i,
                PairOpen {
                    master,
                    slave,
                    locked: mi.locked,
                    slave_exclusive: si.is_some_and(|s| s.exclusive),
                },
            );
        }
        Ok(self.pairs.get_mut(&i).expect("made"))
    }

    /// Open the file of tty file entry `t`.
    fn open(&mut self, t: &pb::TtyFileEntry, dir: &ImageDir) -> Result<OwnedFd> {
        let info = self
            .load(dir)?
            .get(&t.tty_info_id)
            .cloned()
            .ok_or_else(|| {
                bad(format!(
                    "TTY file id {} refers to tty info {}, which tty-info.img lacks",
                    t.id, t.tty_info_id
                ))
            })?;
        let i = info
            .pty
            .as_ref()
            .map(|p| p.index)
            .ok_or_else(|| bad_info(format!("entry {} has no pty index", info.id)))?;
        // Status flags that a file keeps (the access mode is chosen at open).
        let status = t.flags as i32 & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC);
        let acc = t.flags as i32 & libc::O_ACCMODE;
        let what = |s: &str| format!("{s} for pty {i} (file id {})", t.id);
        if info.r#type == pb::TtyType::Pty as i32 && is_ptmx(info.rdev as u64) {
            let p = self.pair(i)?;
            let f = p.master.try_clone().ctx(|| what("dup of the master"))?;
            let fl = nix::fcntl::OFlag::from_bits_truncate(status);
            nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
                .ctx(|| what("flags of the master"))?;
            Ok(f)
        } else if info.r#type == pb::TtyType::Pty as i32 {
            let p = self.pair(i)?;
            ktty::open_slave(&p.master, acc | status | libc::O_CLOEXEC)
                .ctx(|| what("opening the slave"))
        } else if info.r#type == pb::TtyType::Ctty as i32 {
            let p = self.pair(i)?;
            let slave = p
                .slave
                .as_ref()
                .ok_or_else(|| bad_info(format!("pty {i} has /dev/tty files but no slave")))?;
            ktty::open_dev_tty_of(slave, acc | status | libc::O_CLOEXEC)
                .ctx(|| what("opening /dev/tty"))
        } else {
            Err(bad_info(format!(
                "entry {} has tty type {}, which crust does not restore",
                info.id, info.r#type
            )))
        }
    }

    /// Once every file is open and the foreground groups are set: lock
    /// the pairs and set the exclusive modes that were on at dump.
    pub fn finish(&mut self) -> Result<()> {
        for (i, p) in &self.pairs {
            if p.slave_exclusive {
                if let Some(s) = &p.slave {
                    ktty::set_exclusive(s, true)
                        .ctx(|| format!("TIOCEXCL on the slave of pty {i}"))?;
                }
            }
            if p.locked {
                ktty::set_pty_locked(&p.master, true)
                    .ctx(|| format!("locking the slave of pty {i}"))?;
            }
        }
        Ok(())
    }

    /// For each session that had a pty of the tree as its controlling
    /// terminal: its leader's pid and crust's fd of the new slave, which
    /// the leader makes its controlling terminal right after setsid.
    pub fn controlling(&self) -> HashMap<u32, RawFd> {
        self.pairs
            .iter()
            .filter_map(|(&i, p)| {
                let mi = self.pty_info(i, true)?;
                (mi.sid != 0).then_some((mi.sid, p.slave.as_ref()?.as_raw_fd()))
            })
            .collect()
    }

    /// (session, group) of each restored pty whose foreground group is
    /// not its session leader's (the one TIOCSCTTY gives).
    pub fn foregrounds(&self) -> Vec<(u32, u32)> {
        self.pairs
            .keys()
            .filter_map(|&i| {
                let mi = self.pty_info(i, true)?;
                (mi.sid != 0 && mi.pgrp != 0 && mi.pgrp != mi.sid).then_some((mi.sid, mi.pgrp))
            })
            .collect()
    }

    /// With --shell-job: the group that was the foreground job of the
    /// shell's terminal at dump, if it was the tree root's (`root_pgid`).
    pub fn shell_foreground(&mut self, dir: &ImageDir, root_pgid: u32) -> Result<Option<u32>> {
        Ok(self
            .load(dir)?
            .values()
            .find(|e| e.r#type == pb::TtyType::ExtTty as i32)
            .filter(|e| e.pgrp == root_pgid && e.pgrp != e.sid)
            .map(|e| e.pgrp))
    }
}

/// Make `pgrp` the foreground group of the controlling terminal of the
/// seized, restored session leader `pid` (its pid as crust sees it),
/// from inside it: open /dev/tty, TIOCSPGRP, close.
pub fn set_foreground_in(pid: i32, pgrp: u32) -> Result<()> {
    let regs = crust_sys::ptrace::get_regs(pid).ctx(|| format!("registers of {pid}"))?;
    let mut r = crate::remote::Remote::new(pid, regs)?;
    r.map_scratch(None)?;
    let res = (|| -> Result<()> {
        let path = r.put_path(0, "/dev/tty")?;
        let fd = r.call(
            "open of /dev/tty",
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                path,
                (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )?;
        let at = r.put(256, &(pgrp as i32).to_ne_bytes())?;
        let set = r.call(
            &format!("TIOCSPGRP {pgrp}"),
            libc::SYS_ioctl,
            [fd, libc::TIOCSPGRP, at, 0, 0, 0],
        );
        r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        set.map(|_| ())
    })();
    let unmapped = r.unmap_scratch();
    res?;
    unmapped
}

/// With --shell-job: make `pgrp` (the restored root's group) the
/// foreground job of crust's terminal, as it was of the shell's at dump.
pub fn give_shell_terminal(pgrp: u32) -> Result<()> {
    let (i, o, e) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    let own = [i.as_fd(), o.as_fd(), e.as_fd()]
        .into_iter()
        .find(|fd| nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false));
    let Some(tty) = own else {
        return Ok(());
    };
    ktty::set_foreground_group(tty, pgrp as i32)
        .ctx(|| format!("making group {pgrp} the foreground job of crust's terminal"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert!(is_ptmx(libc::makedev(5, 2)));
        assert!(is_dev_tty(libc::makedev(5, 0)));
        assert_eq!(slave_index(libc::makedev(136, 7)), Some(7));
        assert_eq!(slave_index(libc::makedev(136, 300)), Some(300));
        assert_eq!(slave_index(libc::makedev(137, 1)), Some(257));
        assert_eq!(slave_index(libc::makedev(4, 1)), None);
    }

    #[test]
    fn termios_round_trip_and_bad_entries() {
        let t = ktty::Termios {
            iflag: 0o42400,
            oflag: 5,
            cflag: 0o10260,
            lflag: 0o104473,
            line: 0,
            cc: [7; 19],
            ispeed: 23456,
            ospeed: 23456,
        };
        assert_eq!(termios_of(&termios_entry(&t)).unwrap(), t);
        let mut e = termios_entry(&t);
        e.c_cc.push(1);
        assert!(termios_of(&e).is_err(), "20 control characters");
        let mut e = termios_entry(&t);
        e.c_cc[3] = 256;
        assert!(termios_of(&e).is_err(), "a control character above 255");
        let w = pb::WinsizeEntry {
            ws_row: 70000,
            ws_col: 1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert!(winsize_of(&w).is_err());
    }
}
