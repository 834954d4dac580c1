//! Target `refresh`: the one TUF refresh driver (`Refresh`, over `TrustedSet`) fed arbitrary
//! files in the order it asks for them.
//!
//! Input: one byte (bit 0: a full-verification refresh of the Image repository, or a
//! partial-verification one of the Director; bits 1–2: which target to search), then
//! records answering each step in turn; a record's tag says what the answer is: 0 nothing
//! (404), 1 the repository's real file, 2 the record's bytes, 3 the record's bytes as the
//! `signed` text of a document the harness signs with the keys of the role asked for (so
//! that mutated content gets past the signatures). When the records run out, the real files
//! answer. Oracle: the driver ends within a bounded number of steps, and whatever it admits
//! was signed by the keys of the role (a document it admits from a record the harness did
//! not sign must be byte for byte the repository's own).

use uptane_core::crypto::SigningKey;
use uptane_core::refresh::{Refresh, Step};
use uptane_core::testing::{RepoFixture, key, now};
use uptane_core::trusted::{Director, ImageRepo, Limits};
use uptane_core::verify::Raw;

use crate::fixtures::{director_repo, image_repo, keys};
use crate::{envelope, records};

/// Answers past this many mean the driver does not bound its walk.
const MAX_STEPS: usize = 4096;

/// The paths a refresh searches for, by bits 1–2 of the first byte.
pub const SEARCHES: [Option<&str>; 4] = [None, Some("file.bin"), Some("a/x.bin"), Some("a/none")];

/// Answer tags.
pub mod answer {
    /// The repository has no such file.
    pub const NONE: u8 = 0;
    /// The repository's own file.
    pub const REAL: u8 = 1;
    /// The record's bytes.
    pub const BYTES: u8 = 2;
    /// The record's bytes, signed as the role asked for.
    pub const SIGNED: u8 = 3;
}

fn role_keys(director: bool, role: &str) -> Vec<SigningKey> {
    match (director, role) {
        (false, "root") => {
            let mut all = vec![key(1)];
            all.extend(keys::rotated_roots());
            all
        }
        (false, "timestamp") => vec![key(2)],
        (false, "snapshot") => vec![key(3)],
        (false, "targets") => vec![key(4)],
        (false, _) => vec![keys::delegated()],
        (true, "root") => vec![key(11)],
        (true, "timestamp") => vec![key(12)],
        (true, "snapshot") => vec![key(13)],
        (true, _) => vec![key(14)],
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let director = mode & 1 == 1;
    let search = SEARCHES[usize::from((mode >> 1) & 3)];
    let answers = records::parse(rest);
    if director {
        let repo = director_repo();
        let root = Raw::new(repo.initial_root().to_vec());
        let Ok(mut refresh) = Refresh::<Director>::partial(&root, now(), Limits::default()) else {
            return;
        };
        drive(&mut refresh, repo, true, &answers);
    } else {
        let repo = image_repo();
        let root = Raw::new(repo.initial_root().to_vec());
        let Ok(mut refresh) = Refresh::<ImageRepo>::new(&root, now(), Limits::default()) else {
            return;
        };
        if let Some(path) = search {
            refresh.find(path);
        }
        drive(&mut refresh, repo, false, &answers);
    }
}

fn drive<Repo>(
    refresh: &mut Refresh<Repo>,
    repo: &RepoFixture,
    director: bool,
    answers: &[(u8, &[u8])],
) {
    let mut answers = answers.iter();
    for _ in 0..MAX_STEPS {
        let (file, kept) = match refresh.next() {
            Step::Done => return,
            Step::ReadKept(file) => (file, true),
            Step::Fetch { file, .. } => (file, false),
        };
        let real = repo.file(&file);
        let (answer, harness_signed) = match answers.next() {
            None => (if kept { None } else { real.clone() }, false),
            Some((tag, bytes)) => match tag % 4 {
                answer::NONE => (None, false),
                answer::REAL => (real.clone(), false),
                answer::BYTES => (Some(bytes.to_vec()), false),
                _ => {
                    let keys = role_keys(director, file.role());
                    let keys: Vec<&SigningKey> = keys.iter().collect();
                    (Some(envelope::sign(bytes, &keys)), true)
                }
            },
        };
        let given = answer.clone();
        match refresh.feed(answer) {
            Err(_) => return,
            Ok(Some(accepted)) => {
                // Admitted bytes are the repository's own unless the harness signed them.
                assert!(
                    harness_signed || Some(accepted.bytes.to_vec()) == real,
                    "{file} admitted bytes no key of its role signed"
                );
                assert_eq!(
                    Some(accepted.bytes.to_vec()),
                    given,
                    "{file} admitted other bytes than given"
                );
            }
            Ok(None) => {}
        }
    }
    panic!("the refresh asked for more than {MAX_STEPS} files");
}
