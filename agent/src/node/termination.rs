//! Container termination messages, as kubelet makes them: before each attempt of a container
//! starts, an empty host file is bind-mounted read-write at its `terminationMessagePath`
//! (`/dev/termination-log` by default); after the attempt exits, the end of that file becomes
//! the terminated state's `message`, or, with `terminationMessagePolicy: FallbackToLogsOnError`,
//! when the file is empty and the exit code is not 0, the end of the attempt's log.
//!
//! The host file of attempt `N` of container `name` is `<pod dir>/containers/<name>/<N>`
//! (kubelet's `pods/<uid>/containers/<name>/<id>`), the pod directory being
//! [`Volumes::pod_dir`](super::volumes::Volumes::pod_dir): it goes with everything else of the
//! pod when [`Volumes::teardown`](super::volumes::Volumes::teardown) removes that directory
//! (pod deleted), or [`Volumes::teardown_uid`](super::volumes::Volumes::teardown_uid) (the sweep
//! of pods no longer on the node). Its name is a pure function of the attempt, so an agent that
//! restarts finds the file of an attempt again without keeping any state.

use std::{
    fs,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
};

use skiff_api::kinds::Container;

use crate::{
    paths::{self, PathError},
    runtime::BindMount,
};

/// kubelet's `MaxContainerTerminationMessageLength`: the end of the file kept as the message.
pub const MAX_MESSAGE_LENGTH: usize = 4 * 1024;
/// kubelet's `MaxContainerTerminationMessageLogLength`: the end of the log kept as the
/// message, with `FallbackToLogsOnError`.
pub const MAX_LOG_MESSAGE_LENGTH: usize = 2 * 1024;
/// kubelet's `MaxContainerTerminationMessageLogLines`: how many of the log's last lines the
/// fallback message is made of.
pub const MAX_LOG_MESSAGE_LINES: usize = 80;
/// kubelet's `MaxPodTerminationMessageLogLength`: the termination messages of all containers of
/// one pod together ([`pod_message_budget`]).
pub const MAX_POD_MESSAGE_LENGTH: usize = 12 * 1024;

/// The directory under a pod's directory holding its containers' termination message files.
const CONTAINERS: &str = "containers";
/// The mode of the directories between the pod directory and the files (kubelet's private
/// 0750, as [`super::volumes::PRIVATE_DIR_MODE`]): runc binds the file as root, and the
/// container sees only the file.
const DIR_MODE: u32 = 0o750;
/// The file's mode, whatever the umask: kubelet chmods it 0666 so that a container running as
/// any user can write its message.
const FILE_MODE: u32 = 0o666;

/// `terminationMessagePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// `File` (the default): the message is only what the container wrote to the file.
    #[default]
    File,
    /// `FallbackToLogsOnError`: when the file is empty and the container failed, the end of
    /// its log.
    FallbackToLogsOnError,
}

impl Policy {
    /// The policy named by the API's `terminationMessagePolicy` ("" is the default, `File`).
    pub fn from_api(value: &str) -> Result<Policy, TerminationError> {
        match value {
            "" | "File" => Ok(Policy::File),
            "FallbackToLogsOnError" => Ok(Policy::FallbackToLogsOnError),
            other => Err(TerminationError::UnsupportedPolicy(other.to_owned())),
        }
    }
}

/// Why a container's termination message file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TerminationError {
    /// The container name cannot be part of a host path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// A `terminationMessagePath` that cannot be a mount destination. (The API refuses it;
    /// this is the agent's own check of what it read.)
    #[error(
        "terminationMessagePath: Invalid value: {0:?}: must be an absolute path without '.' or '..' elements"
    )]
    InvalidPath(String),
    /// A `terminationMessagePolicy` Kubernetes does not have (the API's words).
    #[error(
        "terminationMessagePolicy: Unsupported value: {0:?}: supported values: \"File\", \"FallbackToLogsOnError\""
    )]
    UnsupportedPolicy(String),
    /// The directory or file could not be made.
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TerminationError + use<> {
    let path = path.to_owned();
    move |source| TerminationError::Io {
        action,
        path,
        source,
    }
}

/// The directory of `container`'s termination message files: `<pod dir>/containers/<name>`,
/// the name checked as the API checks a container name (a DNS-1123 label).
fn container_dir(pod_dir: &Path, container: &str) -> Result<PathBuf, PathError> {
    paths::container_name("containers[].name", container)?;
    paths::child(&pod_dir.join(CONTAINERS), "containers[].name", container)
}

/// The host file of attempt `attempt` of `container`: `<pod dir>/containers/<name>/<attempt>`.
/// `pod_dir` is [`Volumes::pod_dir`](super::volumes::Volumes::pod_dir) of the pod (a checked
/// path); the container name is checked here.
pub fn host_file(pod_dir: &Path, container: &str, attempt: u32) -> Result<PathBuf, PathError> {
    Ok(container_dir(pod_dir, container)?.join(attempt.to_string()))
}

/// `terminationMessagePath` as a mount destination: absolute, each element a plain name.
fn destination(path: &str) -> Result<&str, TerminationError> {
    let p = Path::new(path);
    let plain = p.is_absolute()
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        // `.` elements vanish from `components()`: refuse them by their text.
        && !path.split('/').any(|e| e == "." || e == "..")
        && p.components().any(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(path)
    } else {
        Err(TerminationError::InvalidPath(path.to_owned()))
    }
}

/// At the creation of attempt `attempt` of `container`: makes its termination message file,
/// empty (an existing one is emptied) and mode 0666, and returns the read-write bind mount
/// of it at `termination_message_path`, for the container spec's `mounts`. `None` when the path
/// is empty (kubelet mounts nothing then, and the message is only ever the log's).
///
/// The mount is read-write whatever `readOnlyRootFilesystem` says: a bind mount is its own
/// mount, and runc makes the root read-only after it has mounted everything.
///
/// The files of attempts before `attempt - 1` are removed: the previous attempt's stays for
/// the container's `lastState`, older ones only took room.
pub fn prepare(
    pod_dir: &Path,
    container: &str,
    attempt: u32,
    termination_message_path: &str,
) -> Result<Option<BindMount>, TerminationError> {
    if termination_message_path.is_empty() {
        return Ok(None);
    }
    let dest = destination(termination_message_path)?;
    let dir = container_dir(pod_dir, container)?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&dir)
        .map_err(io_err("creating", &dir))?;
    remove_older(&dir, attempt.saturating_sub(1));
    let file = dir.join(attempt.to_string());
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&file)
        .map_err(io_err("creating the termination message file", &file))?;
    // The umask took bits off the creation mode.
    fs::set_permissions(&file, fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_err("chmoding", &file))?;
    Ok(Some(BindMount {
        source: file,
        destination: dest.to_owned(),
        read_only: false,
    }))
}

/// Removes the files of attempts before `keep` in `dir` (best effort: a file left behind goes
/// with the pod directory).
fn remove_older(dir: &Path, keep: u32) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < keep);
        if old && let Err(e) = fs::remove_file(entry.path()) {
            tracing::debug!(path = %entry.path().display(), error = %e, "removing an old termination message file");
        }
    }
}

/// The terminated state's `message` of an attempt that exited with `exit_code`, as kubelet
/// reads it: the last [`MAX_MESSAGE_LENGTH`] bytes of `host_file` (`None`: the container has no
/// `terminationMessagePath`). With [`Policy::FallbackToLogsOnError`], a failed attempt
/// (`exit_code != 0`) whose file is empty or missing gets the end of its log `log` instead
/// ([`log_tail`]). A missing file is no error: the message is empty. Other failures to read
/// become the message, in kubelet's words.
///
/// Call it only for an attempt that ran: kubelet does not look at the logs of a container
/// that could not start (reason `ContainerCannotRun`), which has none.
///
/// kubelet puts the runtime's own message, if any, before this one (`<runtime's>: <this>`);
/// containerd reports none for an exit.
pub fn message(host_file: Option<&Path>, policy: Policy, exit_code: i32, log: &Path) -> String {
    let fallback = policy == Policy::FallbackToLogsOnError && exit_code != 0;
    let from_file = match host_file {
        None => String::new(),
        Some(path) => match read_tail(path, MAX_MESSAGE_LENGTH) {
            Ok(Some(data)) => String::from_utf8_lossy(&data).into_owned(),
            Ok(None) => String::new(),
            Err(e) => {
                return format!("Error on reading termination log {}: {e}", path.display());
            }
        },
    };
    if !from_file.is_empty() || !fallback {
        return from_file;
    }
    match log_tail(log) {
        Ok(text) => text,
        Err(e) => format!("Error on reading termination message from logs: {e}"),
    }
}

/// [`message`] for attempt `attempt` of `container` (its `terminationMessagePath` and
/// `terminationMessagePolicy` as the API defaulted them), whose log is `log`. `pod_dir` is the
/// pod's [`Volumes::pod_dir`](super::volumes::Volumes::pod_dir), `None` on a node without one
/// (where [`prepare`] mounted nothing: only the log fallback can give a message). A policy the
/// API would have refused counts as `File`.
pub fn exit_message(
    pod_dir: Option<&Path>,
    container: &Container,
    attempt: u32,
    exit_code: i32,
    log: &Path,
) -> String {
    let file = pod_dir
        .filter(|_| !container.termination_message_path.is_empty())
        .and_then(|dir| host_file(dir, &container.name, attempt).ok());
    let policy = Policy::from_api(&container.termination_message_policy).unwrap_or_default();
    message(file.as_deref(), policy, exit_code, log)
}

/// The end of a container's log as kubelet's fallback takes it: its last
/// [`MAX_LOG_MESSAGE_LINES`] lines (a last line without its newline is not counted, and
/// comes along), of which the last [`MAX_LOG_MESSAGE_LENGTH`] bytes. The log is what the
/// container wrote to stdout and stderr, as it wrote it (the shim appends both streams to the
/// file, with no timestamps or stream tags to take off). A missing log is an empty message.
pub fn log_tail(log: &Path) -> io::Result<String> {
    let Some(data) = read_tail(log, MAX_LOG_MESSAGE_LENGTH)? else {
        return Ok(String::new());
    };
    // The lines start after the newline that ends the line before them: the
    // (MAX_LOG_MESSAGE_LINES + 1)-th from the end. Not in these bytes: they all belong.
    let start = data
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(MAX_LOG_MESSAGE_LINES)
        .map_or(0, |(i, _)| i + 1);
    Ok(String::from_utf8_lossy(&data[start..]).into_owned())
}

/// The last `max` bytes of the regular file `path` (fewer when it is shorter); `None` when it
/// does not exist. The last element is not followed if it is a symlink, and anything but a
/// regular file is refused (never waits on a FIFO).
fn read_tail(path: &Path, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut f = match fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let size = meta.len();
    let max = max as u64;
    if size > max {
        f.seek(SeekFrom::Start(size - max))?;
    }
    let mut data = Vec::with_capacity(size.min(max) as usize);
    // At most `max`, should the file grow meanwhile.
    f.take(max).read_to_end(&mut data)?;
    Ok(Some(data))
}

/// The bytes of termination message each container of a pod with `containers` containers
/// (`spec.containers` and `spec.initContainers` together) may have: kubelet divides
/// [`MAX_POD_MESSAGE_LENGTH`] evenly among them, and applies it to the `state.terminated`
/// and `lastState.terminated` messages of every container status of the pod (init and
/// ephemeral containers' too), keeping each message's beginning ([`truncate_message`]).
pub fn pod_message_budget(containers: usize) -> usize {
    MAX_POD_MESSAGE_LENGTH / containers.max(1)
}

/// `message` cut to at most `budget` bytes, keeping its beginning (at a character boundary,
/// where kubelet cuts bytes: the API's strings are UTF-8).
pub fn truncate_message(message: &mut String, budget: usize) {
    if message.len() <= budget {
        return;
    }
    let mut end = budget;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::node::volumes::testdir::TestDir;

    const UID: &str = "0e6d1c3a-5b7f-4c2e-9a1d-3f4b5c6d7e8f";

    fn pod_dir(t: &TestDir) -> PathBuf {
        t.path().join("pods").join(UID)
    }

    fn write(path: &Path, data: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    #[test]
    fn prepare_makes_an_empty_world_writable_file_per_attempt_and_a_read_write_mount_of_it() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        let m = prepare(&dir, "app", 3, "/dev/termination-log")
            .unwrap()
            .expect("a mount");
        assert_eq!(m.source, dir.join("containers/app/3"));
        assert_eq!(m.source, host_file(&dir, "app", 3).unwrap());
        assert_eq!(m.destination, "/dev/termination-log");
        assert!(!m.read_only, "the container must be able to write it");
        let meta = fs::metadata(&m.source).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.len(), 0);
        assert_eq!(meta.mode() & 0o7777, 0o666);
        assert_eq!(
            fs::metadata(dir.join("containers")).unwrap().mode() & 0o7777,
            0o750
        );
    }

    #[test]
    fn prepare_empties_a_file_left_from_the_same_attempt() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        write(&dir.join("containers/app/0"), b"stale message");
        let m = prepare(&dir, "app", 0, "/dev/termination-log")
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(&m.source).unwrap(), b"");
    }

    #[test]
    fn prepare_keeps_the_previous_attempts_file_and_removes_older_ones() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        for a in 0..3 {
            prepare(&dir, "app", a, "/dev/termination-log").unwrap();
        }
        write(&dir.join("containers/app/1"), b"previous");
        prepare(&dir, "app", 3, "/dev/termination-log").unwrap();
        let mut left: Vec<String> = fs::read_dir(dir.join("containers/app"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["2", "3"]);
        prepare(&dir, "other", 0, "/dev/termination-log").unwrap();
        assert!(dir.join("containers/app/3").exists(), "per container");
    }

    #[test]
    fn an_empty_termination_message_path_mounts_nothing_and_makes_no_file() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        assert!(prepare(&dir, "app", 0, "").unwrap().is_none());
        assert!(!dir.exists());
    }

    #[test]
    fn hostile_container_names_and_termination_paths_make_no_host_file() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        for name in ["..", "../../etc", "a/b", "", "A"] {
            assert!(
                matches!(
                    prepare(&dir, name, 0, "/dev/termination-log"),
                    Err(TerminationError::Path(_))
                ),
                "{name:?}"
            );
            assert!(host_file(&dir, name, 0).is_err(), "{name:?}");
        }
        for path in [
            "relative/log",
            "/",
            "/dev/../etc/passwd",
            "/dev/./termination-log",
            "/a\0b",
        ] {
            let e = prepare(&dir, "app", 0, path).unwrap_err();
            assert!(
                matches!(e, TerminationError::InvalidPath(_)),
                "{path:?}: {e}"
            );
        }
        assert!(!dir.exists(), "nothing was made for a refused container");
        assert_eq!(
            TerminationError::InvalidPath("x".into()).to_string(),
            "terminationMessagePath: Invalid value: \"x\": must be an absolute path without '.' or '..' elements"
        );
    }

    #[test]
    fn a_symlink_in_place_of_the_file_is_not_followed() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        let victim = t.path().join("victim");
        write(&victim, b"keep me");
        fs::create_dir_all(dir.join("containers/app")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("containers/app/0")).unwrap();
        assert!(prepare(&dir, "app", 0, "/dev/termination-log").is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        let msg = message(
            Some(&dir.join("containers/app/0")),
            Policy::File,
            1,
            &t.path().join("0.log"),
        );
        assert!(
            msg.starts_with("Error on reading termination log "),
            "{msg}"
        );
    }

    #[test]
    fn the_file_message_is_its_last_4096_bytes() {
        let t = TestDir::new("termination");
        let file = t.path().join("msg");
        let log = t.path().join("0.log");
        write(&file, b"short message\n");
        assert_eq!(
            message(Some(&file), Policy::File, 0, &log),
            "short message\n"
        );
        let mut big = vec![b'a'; 1000];
        big.extend(std::iter::repeat_n(b'b', MAX_MESSAGE_LENGTH));
        write(&file, &big);
        let msg = message(Some(&file), Policy::File, 1, &log);
        assert_eq!(msg.len(), MAX_MESSAGE_LENGTH);
        assert!(msg.bytes().all(|b| b == b'b'), "the end is kept");
        let exact = vec![b'c'; MAX_MESSAGE_LENGTH];
        write(&file, &exact);
        assert_eq!(
            message(Some(&file), Policy::File, 0, &log).as_bytes(),
            exact
        );
    }

    #[test]
    fn an_empty_file_with_the_file_policy_is_an_empty_message_even_on_failure() {
        let t = TestDir::new("termination");
        let file = t.path().join("msg");
        let log = t.path().join("0.log");
        write(&file, b"");
        write(&log, b"panic: boom\n");
        assert_eq!(message(Some(&file), Policy::File, 1, &log), "");
        assert_eq!(message(Some(&file), Policy::File, 0, &log), "");
    }

    #[test]
    fn a_missing_file_is_an_empty_message_not_an_error() {
        let t = TestDir::new("termination");
        let log = t.path().join("0.log");
        let gone = t.path().join("no/such/file");
        assert_eq!(message(Some(&gone), Policy::File, 2, &log), "");
        assert_eq!(message(None, Policy::File, 2, &log), "");
    }

    #[test]
    fn the_log_fallback_happens_only_on_a_non_zero_exit_with_an_empty_or_missing_file() {
        let t = TestDir::new("termination");
        let file = t.path().join("msg");
        let log = t.path().join("0.log");
        write(&log, b"starting\npanic: boom\n");
        write(&file, b"");
        let fb = Policy::FallbackToLogsOnError;
        assert_eq!(message(Some(&file), fb, 0, &log), "", "a success");
        assert_eq!(message(Some(&file), fb, 2, &log), "starting\npanic: boom\n");
        assert_eq!(
            message(Some(&file), fb, 137, &log),
            "starting\npanic: boom\n",
            "killed (OOM, SIGKILL): non-zero too"
        );
        assert_eq!(
            message(Some(&t.path().join("gone")), fb, 1, &log),
            "starting\npanic: boom\n"
        );
        assert_eq!(message(None, fb, 1, &log), "starting\npanic: boom\n");
        write(&file, b"written by the app");
        assert_eq!(
            message(Some(&file), fb, 1, &log),
            "written by the app",
            "the file wins when it has something"
        );
        assert_eq!(
            message(None, fb, 1, &t.path().join("no.log")),
            "",
            "no log, no message"
        );
    }

    #[test]
    fn the_log_fallback_takes_the_last_80_lines() {
        let t = TestDir::new("termination");
        let log = t.path().join("0.log");
        let text: String = (0..200).map(|i| format!("{i}\n")).collect();
        write(&log, text.as_bytes());
        let tail = log_tail(&log).unwrap();
        let expected: String = (120..200).map(|i| format!("{i}\n")).collect();
        assert_eq!(tail, expected);
        // A last line without its newline is not one of the 80, and comes along.
        let text = format!("{text}partial");
        write(&log, text.as_bytes());
        assert_eq!(log_tail(&log).unwrap(), format!("{expected}partial"));
        write(&log, b"only\ntwo lines");
        assert_eq!(log_tail(&log).unwrap(), "only\ntwo lines");
    }

    #[test]
    fn the_log_fallback_keeps_at_most_the_last_2048_bytes_of_those_lines() {
        let t = TestDir::new("termination");
        let log = t.path().join("0.log");
        let line = |i: usize| format!("{i:03}{}\n", "x".repeat(96));
        let text: String = (0..100).map(line).collect();
        write(&log, text.as_bytes());
        let tail = log_tail(&log).unwrap();
        assert_eq!(tail.len(), MAX_LOG_MESSAGE_LENGTH);
        assert!(text.ends_with(&tail), "the end is kept");
        assert!(tail.ends_with(&line(99)));
        // One long line: its end.
        let long = format!("{}\n", "y".repeat(10_000));
        write(&log, long.as_bytes());
        assert_eq!(log_tail(&log).unwrap().len(), MAX_LOG_MESSAGE_LENGTH);
        let msg = message(None, Policy::FallbackToLogsOnError, 1, &log);
        assert_eq!(msg.len(), MAX_LOG_MESSAGE_LENGTH);
    }

    #[test]
    fn a_directory_in_place_of_the_file_becomes_kubelets_error_message() {
        let t = TestDir::new("termination");
        let dir = t.path().join("msg");
        fs::create_dir_all(&dir).unwrap();
        let msg = message(
            Some(&dir),
            Policy::FallbackToLogsOnError,
            1,
            &t.path().join("0.log"),
        );
        assert!(
            msg.starts_with(&format!(
                "Error on reading termination log {}: ",
                dir.display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn the_exit_message_of_a_container_reads_the_file_its_attempt_was_given() {
        let t = TestDir::new("termination");
        let dir = pod_dir(&t);
        let log = t.path().join("1.log");
        write(&log, b"last words\n");
        let mut c = Container {
            name: "app".into(),
            termination_message_path: "/dev/termination-log".into(),
            termination_message_policy: "File".into(),
            ..Default::default()
        };
        let m = prepare(&dir, &c.name, 1, &c.termination_message_path)
            .unwrap()
            .unwrap();
        fs::write(&m.source, "bye").unwrap();
        assert_eq!(exit_message(Some(&dir), &c, 1, 1, &log), "bye");
        assert_eq!(
            exit_message(Some(&dir), &c, 2, 1, &log),
            "",
            "another attempt"
        );
        c.termination_message_policy = "FallbackToLogsOnError".into();
        assert_eq!(exit_message(Some(&dir), &c, 2, 1, &log), "last words\n");
        assert_eq!(exit_message(None, &c, 1, 1, &log), "last words\n");
        c.termination_message_path = String::new();
        assert_eq!(
            exit_message(Some(&dir), &c, 1, 1, &log),
            "last words\n",
            "no path: the file is not read"
        );
    }

    #[test]
    fn policies_parse_as_the_api_names_them() {
        assert_eq!(Policy::from_api("").ok(), Some(Policy::File));
        assert_eq!(Policy::from_api("File").ok(), Some(Policy::File));
        assert_eq!(
            Policy::from_api("FallbackToLogsOnError").ok(),
            Some(Policy::FallbackToLogsOnError)
        );
        let e = Policy::from_api("Always").unwrap_err();
        assert_eq!(
            e.to_string(),
            "terminationMessagePolicy: Unsupported value: \"Always\": supported values: \"File\", \"FallbackToLogsOnError\""
        );
    }

    #[test]
    fn the_pod_budget_is_12_kib_divided_evenly_and_keeps_each_messages_beginning() {
        assert_eq!(pod_message_budget(0), 12 * 1024);
        assert_eq!(pod_message_budget(1), 12 * 1024);
        assert_eq!(pod_message_budget(3), 4096);
        assert_eq!(pod_message_budget(5), 2457);
        let mut m = "abcdef".to_owned();
        truncate_message(&mut m, 4);
        assert_eq!(m, "abcd");
        let mut m = "short".to_owned();
        truncate_message(&mut m, 4096);
        assert_eq!(m, "short");
        // Never inside a character.
        let mut m = "aé".to_owned();
        truncate_message(&mut m, 2);
        assert_eq!(m, "a");
    }
}
