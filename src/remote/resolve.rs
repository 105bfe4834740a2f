//! Which checkpoint a URL names, as `reader::resolve` decides for local paths: a "directory" and
//! its `checkpoint` state file, a prefix, an index or data file, a V1 file or glob; and the V1
//! files fetched whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::client::{Client, Object};
use super::fetch::{self, Budget};
use super::location::{self, Location, Scheme};
use super::FetchedFile;
use crate::base::error::{ErrorKind, Result};
use crate::load::RemoteOptions;
use crate::reader::glob;

/// How long the listing of a folder hint may take (the checkpoints a folder without a state file
/// holds): past it, the error comes without the hint.
const HINT_LISTING: std::time::Duration = std::time::Duration::from_secs(10);

/// The files of the V1 checkpoint `prefix` (one object, or the objects it matches as a glob,
/// in any component), each fetched in parallel ranges; at most `whole_max_bytes` in all.
pub(super) fn open_v1(
    client: &Arc<Client>,
    loc: &Location,
    prefix: &str,
    options: &RemoteOptions,
) -> Result<Vec<FetchedFile>> {
    let objects: Vec<Object> = if !glob::key_has_magic(prefix) {
        client.exists(prefix)?.into_iter().collect()
    } else if let Some(o) = client.exists(prefix)? {
        // A key that names an object is that object, whatever its characters (as on disk).
        vec![o]
    } else {
        if matches!(loc.scheme, Scheme::Http | Scheme::Https) {
            return Err(ErrorKind::Remote {
                url: loc.url(prefix),
                range: None,
                reason: "a sharded V1 checkpoint names its files by a glob, and a plain HTTP \
                         server cannot list them; read it through s3:// or gs://, or from a local copy"
                    .into(),
            }
            .into());
        }
        let (folder, name) = prefix.split_at(prefix.rfind('/').map_or(0, |i| i + 1));
        // A folder that holds keys as it is named is that folder (as on disk: `runs[1]/`), and
        // only the last component is a pattern; otherwise the folder before the first pattern
        // character is listed with everything below it, and each key matched component by
        // component (as TensorFlow's GCS file system does).
        let literal_folder = !glob::key_has_magic(folder) || client.has_keys_under(folder)?;
        let mut found: Vec<Object> = if literal_folder {
            client
                .list(folder, false)?
                .into_iter()
                .filter(|o| {
                    let key: &str = o.path.as_ref();
                    key.strip_prefix(folder)
                        .is_some_and(|base| glob::fnmatch(name.as_bytes(), base.as_bytes()))
                })
                .collect()
        } else {
            let dir = glob::key_dir(prefix);
            let recursive = prefix[dir.len()..].contains('/');
            client
                .list(dir, recursive)?
                .into_iter()
                .filter(|o| glob::key_matches(prefix, o.path.as_ref()))
                .collect()
        };
        found.sort_by(|a, b| a.url.cmp(&b.url));
        // As on disk: a pattern that matches a V2 checkpoint's files names its prefix.
        if let Some(index) = found.iter().find(|o| o.url.ends_with(".index")) {
            return Err(ErrorKind::Remote {
                url: loc.url(prefix),
                range: None,
                reason: crate::reader::resolve::v2_pattern(&index.url),
            }
            .into());
        }
        found
    };
    if objects.is_empty() {
        return Err(ErrorKind::NotFound {
            path: PathBuf::from(loc.url(prefix)),
        }
        .into());
    }
    let total: u64 = objects.iter().fold(0u64, |t, o| t.saturating_add(o.size));
    if total > options.whole_max_bytes {
        return Err(ErrorKind::Remote {
            url: loc.url(prefix),
            range: None,
            reason: format!(
                "a V1 checkpoint is read whole, and its {} file(s) hold {total} bytes, more than \
                 RemoteOptions::whole_max_bytes ({}); copy it to a local disk, or raise the bound",
                objects.len(),
                options.whole_max_bytes
            ),
        }
        .into());
    }
    objects
        .into_iter()
        .map(|obj| {
            let (obj, bytes) = fetch_whole(client, obj, "a V1 checkpoint file")?;
            Ok(FetchedFile {
                url: PathBuf::from(&obj.url),
                bytes,
                client: client.clone(),
                obj,
            })
        })
        .collect()
}

/// The key prefix of the checkpoint `loc` names, as `resolve::resolve` does for local paths: a
/// "directory" first (TensorFlow's `isdir`: on object storage, any key under `KEY/`), whose
/// `checkpoint` state file names the checkpoint (relative paths joined onto the directory and
/// normalized as on disk); else a prefix whose `.index` exists, a `.index` or data file's prefix,
/// a V1 glob, or a V1 file. With them, the state file's key when it named the checkpoint.
#[allow(clippy::type_complexity)]
pub(super) fn resolve(
    client: &Arc<Client>,
    loc: &Location,
) -> Result<(String, Option<Object>, Option<String>)> {
    let key = loc.key.as_str();
    let dir = key.trim_end_matches('/');
    let dir_slash = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let state_key = format!("{dir_slash}checkpoint");
    let dir_path = PathBuf::from(loc.url(dir));
    let no_ckpt = |reason: String| -> crate::Error {
        ErrorKind::NoCheckpointInDir {
            dir: dir_path.clone(),
            reason,
        }
        .into()
    };
    let named_file = !key.is_empty() && !key.ends_with('/');
    // Credentials that may read objects but not list the bucket get a refusal (S3: 403) for a
    // HEAD of any key that is not there, and for a listing. So a probe's refusal counts as "not
    // there", and the last one (of the key closest to what was named) is the error if nothing is
    // found.
    let refused = std::cell::RefCell::new(None::<crate::Error>);
    let refusal = |e: crate::Error| -> Result<()> {
        if is_refusal(&e) {
            *refused.borrow_mut() = Some(e);
            Ok(())
        } else {
            Err(e)
        }
    };
    let present = |key: &str| -> Result<Option<Object>> {
        client.exists(key).or_else(|e| refusal(e).map(|()| None))
    };
    let nothing = |otherwise: crate::Error| refused.borrow_mut().take().unwrap_or(otherwise);
    // Where the "directory" is a SavedModel's, what the error adds: the checkpoint of its
    // variables (as on disk; two HEADs, made only on the way to an error). Only a hint: a probe
    // that fails or is refused gives none, and is not the error.
    let saved_model = || -> String {
        let variables = format!("{dir_slash}variables/variables");
        let there = |key: &str| matches!(client.exists(key), Ok(Some(_)));
        match there(&format!("{dir_slash}saved_model.pb")) && there(&format!("{variables}.index")) {
            true => crate::reader::resolve::saved_model_hint(loc.url(&variables)),
            false => String::new(),
        }
    };
    // Else, where it can be listed, the checkpoints it holds: the prefixes of its `.index`
    // objects, newest first (as on disk; one listing of the keys directly under it, at most
    // 10,000 of them, 10 s in all). A hint too: a listing that fails, is refused, is longer or
    // takes longer gives none (and does not hold the error back for a request's 10 minutes).
    let folder_hint = || -> String {
        let hint = saved_model();
        if !hint.is_empty() {
            return hint;
        }
        let Ok(objects) = client.list_bounded(&dir_slash, false, 10_000, HINT_LISTING) else {
            return String::new();
        };
        crate::reader::resolve::checkpoints_hint(objects.into_iter().filter_map(|o| {
            let prefix = o.path.as_ref().strip_suffix(".index")?;
            Some((o.modified, loc.url(prefix)))
        }))
    };
    let Some(state) = present(&state_key)? else {
        // A "directory" without a state file is an error even where a checkpoint of the same
        // name lies beside it, as TensorFlow decides (a plain HTTP server cannot be asked).
        let listable = !matches!(loc.scheme, Scheme::Http | Scheme::Https);
        if listable && !key.is_empty() {
            let keys_under = client
                .has_keys_under(&dir_slash)
                .or_else(|e| refusal(e).map(|()| false))?;
            if keys_under {
                let why = format!("it has no 'checkpoint' state file{}", folder_hint());
                return Err(nothing(no_ckpt(why)));
            }
        }
        if named_file {
            if let Some(index) = present(&format!("{key}.index"))? {
                return Ok((key.to_string(), Some(index), None));
            }
            let stripped = key.strip_suffix(".index").or_else(|| {
                let i = key.rfind(".data-")?;
                let tail = &key[i + 6..];
                (tail.len() == 14 && tail.as_bytes()[5..9] == *b"-of-").then_some(&key[..i])
            });
            if let Some(p) = stripped {
                if let Some(index) = present(&format!("{p}.index"))? {
                    return Ok((p.to_string(), Some(index), None));
                }
            }
            // A glob of V1 files (a sharded V1 save), or a V1 file.
            // (A pattern in any component: `v1_*/model-3` too, as on disk.)
            if glob::key_has_magic(key) || present(key)?.is_some() {
                return Ok((key.to_string(), None, None));
            }
        }
        // A plain HTTP server cannot say that a URL is a folder, but a SavedModel's files can be
        // asked for.
        if !listable {
            let hint = saved_model();
            if !hint.is_empty() {
                return Err(no_ckpt(format!("it has no 'checkpoint' state file{hint}")));
            }
        }
        return Err(nothing(
            ErrorKind::NotFound {
                path: PathBuf::from(loc.url(key)),
            }
            .into(),
        ));
    };
    let (_, text) = fetch_whole(client, state, "the 'checkpoint' state file")?;
    let text = String::from_utf8(text)
        .map_err(|_| no_ckpt(format!("{} is not UTF-8 text", loc.url(&state_key))))?;
    let path = crate::reader::state::parse_state(&text).map_err(|reason| {
        no_ckpt(format!(
            "{} is not a valid CheckpointState: {reason}",
            loc.url(&state_key)
        ))
    })?;
    if path.is_empty() {
        return Err(ErrorKind::BadStateFile {
            path: PathBuf::from(loc.url(&state_key)),
            reason: "model_checkpoint_path is empty".into(),
        }
        .into());
    }
    let prefix = if path.contains("://") {
        // A URL: used as it is, in the same bucket or host.
        let named = Location::parse(&path).map_err(|e| {
            no_ckpt(format!(
                "its state file names {path}, which cannot be read: {e}"
            ))
        })?;
        if !named.same_store(loc) {
            return Err(no_ckpt(format!(
                "its state file names {path}, in another bucket or host"
            )));
        }
        named.key
    } else if path.starts_with('/') {
        // An absolute local path (TensorFlow 1's Saver writes them): TensorFlow would read that
        // path on the local disk. Guessing the checkpoint beside the state file could pick
        // another one, so it is an error, suggesting that one where it exists.
        let base = Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let beside = format!("{dir_slash}{base}");
        let hint = match client.exists(&format!("{beside}.index")) {
            Ok(Some(_)) => format!(
                " (if it is the checkpoint beside the state file, name it: {})",
                loc.url(&beside)
            ),
            _ => String::new(),
        };
        return Err(no_ckpt(format!(
            "its state file names the local path {path}, which is not on {}; name the \
             checkpoint by its URL{hint}",
            loc.url("")
        )));
    } else {
        location::normalize_key(&format!("{dir_slash}{path}")).ok_or_else(|| {
            no_ckpt(format!(
                "its state file names {path}, which climbs above the top of {}",
                loc.url("")
            ))
        })?
    };
    // As on disk: the checkpoint it names must be there (a V2 index, or a V1 file or glob).
    let index = present(&format!("{prefix}.index"))?;
    if index.is_none() && !glob::key_has_magic(&prefix) && present(&prefix)?.is_none() {
        return Err(nothing(no_ckpt(format!(
            "its state file names {} but no files match it",
            loc.url(&prefix)
        ))));
    }
    Ok((prefix, index, Some(state_key)))
}

/// Whether `e` is object storage refusing access (401/403).
pub(super) fn is_refusal(e: &crate::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::RemoteAccess {
            not_found: false,
            ..
        }
    )
}

/// The whole of an object seen as `obj` (an index, a state file, a V1 file), fetched in checked
/// parallel ranges like tensor bytes: a short or changed body is retried or named, never taken.
/// `what` names it in the error for an object larger than `RemoteOptions::whole_max_bytes`.
pub(super) fn fetch_whole(
    client: &Arc<Client>,
    obj: Object,
    what: &str,
) -> Result<(Arc<Object>, Vec<u8>)> {
    let bound = client.options.whole_max_bytes;
    if obj.size > bound {
        return Err(ErrorKind::Remote {
            url: obj.url.clone(),
            range: None,
            reason: format!(
                "{what} is read whole, and holds {} bytes, more than \
                 RemoteOptions::whole_max_bytes ({bound})",
                obj.size
            ),
        }
        .into());
    }
    let budget = Budget::new(
        client.options.concurrency,
        client.options.max_in_flight_bytes(),
    );
    let mut bytes = crate::base::mmap::alloc_zeroed(obj.size as usize, &obj.url)?;
    let obj = Arc::new(obj);
    fetch::into(
        client,
        &budget,
        &obj,
        0..obj.size,
        &mut bytes,
        <[u8]>::copy_from_slice,
    )?;
    Ok((obj, bytes))
}
