//! What the writer knows about every unfinished message and every segment: enough to tell
//! when a segment can be deleted and to copy a message forward when its segment is compacted.
//! Message bodies are not kept here; they stay on disk and are read back only to relocate.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::{FinalStatus, MsgId};

/// Where a message's accept record lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u64,
    pub off: u64,
    pub len: u32,
}

/// One unfinished message.
#[derive(Debug)]
pub(crate) struct Live {
    pub loc: Loc,
    /// Segments holding a record of this message, oldest first, no repeats.
    pub segs: Vec<u64>,
    /// The message's attempt records, encoded, in order: copied forward on relocation.
    pub attempts: Vec<u8>,
    /// Recipients without a final status.
    pub pending: Vec<String>,
}

impl Live {
    fn bytes(&self) -> u64 {
        self.loc.len as u64 + self.attempts.len() as u64
    }
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Seg {
    pub path: PathBuf,
    pub bytes: u64,
    /// Unfinished messages with a record here: at zero (and once every older segment is
    /// gone) the file can be deleted.
    pub refs: u64,
    /// Messages whose accept record was written here, in order (some since finished or
    /// moved on); `cursor` is how far relocation has walked.
    pub accepted: Vec<MsgId>,
    pub cursor: usize,
}

impl Seg {
    pub fn new(path: PathBuf, bytes: u64) -> Seg {
        Seg { path, bytes, refs: 0, accepted: Vec::new(), cursor: 0 }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub live: HashMap<MsgId, Live>,
    pub segs: BTreeMap<u64, Seg>,
    /// Bytes of accept and attempt records of unfinished messages.
    pub live_bytes: u64,
}

impl Index {
    /// A message accepted, or its copy written by relocation and found again by recovery:
    /// either way the state starts over from this record.
    pub fn accept(&mut self, id: MsgId, loc: Loc, rcpts: Vec<String>) {
        self.forget(id);
        let mut pending = rcpts;
        pending.sort_unstable();
        pending.dedup();
        if pending.is_empty() {
            return;
        }
        if let Some(s) = self.segs.get_mut(&loc.seg) {
            s.refs += 1;
            s.accepted.push(id);
        }
        let live = Live { loc, segs: vec![loc.seg], attempts: Vec::new(), pending };
        self.live_bytes += live.bytes();
        self.live.insert(id, live);
    }

    /// The message's records were copied, in one frame, to `loc`.
    pub fn relocate(&mut self, id: MsgId, loc: Loc) {
        let Some(live) = self.live.get_mut(&id) else { return };
        for s in live.segs.drain(..) {
            if let Some(seg) = self.segs.get_mut(&s) {
                seg.refs -= 1;
            }
        }
        self.live_bytes -= live.loc.len as u64;
        self.live_bytes += loc.len as u64;
        live.loc = loc;
        live.segs.push(loc.seg);
        if let Some(seg) = self.segs.get_mut(&loc.seg) {
            seg.refs += 1;
            seg.accepted.push(id);
        }
    }

    /// An attempt record for `id` was written in segment `seg`. Returns true when it
    /// finished the message.
    pub fn attempt(&mut self, id: MsgId, seg: u64, rec: &[u8], rcpt: &str, final_status: Option<FinalStatus>) -> bool {
        let Some(live) = self.live.get_mut(&id) else { return false };
        live.attempts.extend_from_slice(rec);
        self.live_bytes += rec.len() as u64;
        if live.segs.last() != Some(&seg) {
            live.segs.push(seg);
            if let Some(s) = self.segs.get_mut(&seg) {
                s.refs += 1;
            }
        }
        if final_status.is_some() {
            if let Ok(i) = live.pending.binary_search_by(|p| p.as_str().cmp(rcpt)) {
                live.pending.remove(i);
            }
            if live.pending.is_empty() {
                self.forget(id);
                return true;
            }
        }
        false
    }

    /// Drops a message and its references to segments.
    fn forget(&mut self, id: MsgId) {
        if let Some(live) = self.live.remove(&id) {
            self.live_bytes -= live.bytes();
            for s in live.segs {
                if let Some(seg) = self.segs.get_mut(&s) {
                    seg.refs -= 1;
                }
            }
        }
    }

    pub fn is_live(&self, id: MsgId) -> bool {
        self.live.contains_key(&id)
    }

    pub fn disk_bytes(&self) -> u64 {
        self.segs.values().map(|s| s.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(segs: &[u64]) -> Index {
        let mut i = Index::default();
        for &s in segs {
            i.segs.insert(s, Seg::new(PathBuf::from(format!("seg-{s}")), 0));
        }
        i
    }

    #[test]
    fn refs_follow_records_and_drop_when_finished() {
        let mut i = idx(&[1, 2]);
        i.accept(7, Loc { seg: 1, off: 32, len: 100 }, vec!["a@x".into(), "b@x".into(), "a@x".into()]);
        assert_eq!(i.segs[&1].refs, 1);
        assert!(!i.attempt(7, 2, b"r1", "a@x", None));
        assert_eq!((i.segs[&1].refs, i.segs[&2].refs), (1, 1));
        assert!(!i.attempt(7, 2, b"r2", "a@x", Some(FinalStatus::Delivered)));
        assert!(i.attempt(7, 2, b"r3", "b@x", Some(FinalStatus::Bounced)));
        assert_eq!((i.segs[&1].refs, i.segs[&2].refs, i.live_bytes), (0, 0, 0));
        assert!(!i.is_live(7));
    }

    #[test]
    fn relocation_moves_every_reference() {
        let mut i = idx(&[1, 2, 3]);
        i.accept(7, Loc { seg: 1, off: 32, len: 100 }, vec!["a@x".into()]);
        i.attempt(7, 2, b"r1", "a@x", None);
        i.relocate(7, Loc { seg: 3, off: 32, len: 100 });
        assert_eq!((i.segs[&1].refs, i.segs[&2].refs, i.segs[&3].refs), (0, 0, 1));
        assert_eq!(i.live[&7].attempts, b"r1");
        assert_eq!(i.live_bytes, 102);
    }
}
