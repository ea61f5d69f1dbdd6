//! What the service keeps between requests, in memory and bounded: conversations (so "and
//! what about tomorrow?" follows on) and jobs (long answers fetched later). Each belongs to
//! the key that made it: another device's key finds nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::error::Error;

/// Who made something: a digest of the `Authorization` header (all zeros without one).
pub type Owner = [u8; 32];

pub fn owner(auth: Option<&str>) -> Owner {
    auth.map_or([0; 32], |a| Sha256::digest(a.as_bytes()).into())
}

/// A finished answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    /// Why it is shorter than the model's answer: `deadline` or `max_words`.
    pub truncated: Option<&'static str>,
    pub conversation: Option<String>,
    pub model: String,
}

#[derive(Debug)]
struct Conversation {
    owner: Owner,
    turns: VecDeque<(String, String)>,
    last: Instant,
}

/// Conversations by id.
#[derive(Debug)]
pub struct Conversations {
    map: Mutex<HashMap<String, Conversation>>,
    max_turns: usize,
    ttl: Duration,
    max: usize,
}

impl Conversations {
    pub fn new(max_turns: usize, ttl: Duration, max: usize) -> Conversations {
        Conversations {
            map: Mutex::new(HashMap::new()),
            max_turns,
            ttl,
            max: max.max(1),
        }
    }

    /// The earlier turns of `id`, oldest first, if it is alive and `owner`'s.
    pub fn turns(&self, id: &str, owner: &Owner) -> Option<Vec<(String, String)>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|c| &c.owner == owner && c.last.elapsed() < self.ttl)
            .map(|c| c.turns.iter().cloned().collect())
    }

    /// Adds a turn to `id` (made if new), keeping the newest `max_turns`.
    pub fn record(&self, id: &str, owner: Owner, question: String, answer: String) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl;
        map.retain(|_, c| c.last.elapsed() < ttl);
        let c = map.entry(id.to_owned()).or_insert_with(|| Conversation {
            owner,
            turns: VecDeque::new(),
            last: Instant::now(),
        });
        if c.owner != owner {
            // Someone else's id: start over rather than mix two devices' turns.
            c.owner = owner;
            c.turns.clear();
        }
        c.turns.push_back((question, answer));
        while c.turns.len() > self.max_turns {
            c.turns.pop_front();
        }
        c.last = Instant::now();
        while map.len() > self.max {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone)]
pub enum JobState {
    Running,
    Done(Answer),
    Failed { status: u16, sentence: String },
}

#[derive(Debug)]
struct Job {
    owner: Owner,
    state: JobState,
    finished: Option<Instant>,
}

/// Jobs by id.
#[derive(Debug)]
pub struct Jobs {
    map: Mutex<HashMap<String, Job>>,
    ttl: Duration,
    max: usize,
}

impl Jobs {
    pub fn new(ttl: Duration, max: usize) -> Jobs {
        Jobs {
            map: Mutex::new(HashMap::new()),
            ttl,
            max: max.max(1),
        }
    }

    /// Makes room and registers a running job; its id.
    pub fn start(&self, owner: Owner) -> Result<String, Error> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl;
        map.retain(|_, j| j.finished.is_none_or(|f| f.elapsed() < ttl));
        if map.len() >= self.max {
            let oldest = map
                .iter()
                .filter_map(|(k, j)| j.finished.map(|f| (f, k.clone())))
                .min()
                .map(|(_, k)| k);
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => return Err(Error::TooManyJobs),
            }
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        map.insert(
            id.clone(),
            Job {
                owner,
                state: JobState::Running,
                finished: None,
            },
        );
        Ok(id)
    }

    pub fn finish(&self, id: &str, state: JobState) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = map.get_mut(id) {
            j.state = state;
            j.finished = Some(Instant::now());
        }
    }

    /// The job's state, if it is `owner`'s and not expired.
    pub fn get(&self, id: &str, owner: &Owner) -> Option<JobState> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|j| &j.owner == owner && j.finished.is_none_or(|f| f.elapsed() < self.ttl))
            .map(|j| j.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_are_bounded_and_private() {
        let c = Conversations::new(2, Duration::from_secs(60), 2);
        let me = owner(Some("Bearer a"));
        let other = owner(Some("Bearer b"));
        for i in 0..3 {
            c.record("x", me, format!("q{i}"), format!("a{i}"));
        }
        let t = c.turns("x", &me).unwrap();
        assert_eq!(
            t,
            vec![("q1".into(), "a1".into()), ("q2".into(), "a2".into())]
        );
        assert!(c.turns("x", &other).is_none(), "another key finds nothing");
        c.record("y", me, "q".into(), "a".into());
        c.record("z", me, "q".into(), "a".into());
        assert!(c.turns("x", &me).is_none(), "the least recently used went");
    }

    #[test]
    fn jobs_are_bounded_and_private() {
        let j = Jobs::new(Duration::from_secs(60), 2);
        let me = owner(None);
        let a = j.start(me).unwrap();
        let _b = j.start(me).unwrap();
        assert!(matches!(j.start(me), Err(Error::TooManyJobs)));
        j.finish(
            &a,
            JobState::Failed {
                status: 503,
                sentence: "x".into(),
            },
        );
        assert!(j.get(&a, &owner(Some("k"))).is_none());
        let c = j.start(me).unwrap();
        assert!(j.get(&a, &me).is_none(), "the finished one made room");
        assert!(matches!(j.get(&c, &me), Some(JobState::Running)));
    }
}
