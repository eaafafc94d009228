//! What the kubelet says of an instance's program, in the words of the instance's status
//! (pure): an image that cannot be pulled, an exit code, an OOM kill, restarts. Only a
//! real kubelet reports these (kwok reports none); without them the instance reads as
//! before.

use std::time::Duration;

use gpu_cloud_api::v1::{GpuInstance, ProgramExit};
use kube::ResourceExt;

use super::cached_pod::{ProgramState, Termination};

/// The default of `--image-pull-timeout`: how long an instance's image may fail to pull
/// (the kubelet retrying with back-off: 10 s, 20 s, 40 s, …) before the instance fails
/// and frees its GPUs.
pub const DEFAULT_IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// Waiting reasons of a pull that failed and is being retried.
const PULL_RETRYING: &[&str] = &["ErrImagePull", "ImagePullBackOff", "RegistryUnavailable"];
/// Waiting reasons of a pull that can never succeed: no retry is worth waiting for.
const PULL_HOPELESS: &[&str] = &["InvalidImageName", "ErrImageNeverPull"];

/// The kubelet cannot pull the instance's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFailure {
    /// The kubelet's reason (`ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`, …).
    pub reason: String,
    /// The kubelet's message (the registry's or runtime's error).
    pub message: Option<String>,
    /// No retry can succeed (an invalid reference, or pulling not allowed).
    pub hopeless: bool,
}

/// The pull failure the kubelet reports for the program's container, if any.
pub fn pull_failure(program: Option<&ProgramState>) -> Option<PullFailure> {
    let (reason, message) = program?.waiting.as_ref()?;
    let hopeless = PULL_HOPELESS.contains(&reason.as_str());
    (hopeless || PULL_RETRYING.contains(&reason.as_str())).then(|| PullFailure {
        reason: reason.clone(),
        message: message.clone(),
        hopeless,
    })
}

/// The message of an instance that failed because its image cannot be pulled.
pub fn pull_failed_message(inst: &GpuInstance, f: &PullFailure, waited: Duration) -> String {
    let why = f.message.as_deref().unwrap_or(f.reason.as_str());
    if f.hopeless {
        format!("its image {} cannot be pulled: {why}", inst.spec.image)
    } else {
        format!(
            "its image {} could not be pulled in {}s: {why}",
            inst.spec.image,
            waited.as_secs()
        )
    }
}

/// The last termination the kubelet reports: the current one, else the one before the
/// last restart.
fn termination(program: Option<&ProgramState>) -> Option<&Termination> {
    let p = program?;
    p.terminated.as_ref().or(p.last_terminated.as_ref())
}

/// How the program last ended, for `status.lastExit`.
pub fn last_exit(program: Option<&ProgramState>) -> Option<ProgramExit> {
    termination(program).map(|t| ProgramExit {
        exit_code: t.exit_code,
        reason: t.reason.clone(),
        at: t.finished_at,
    })
}

/// Why a pod that failed did, as (condition and Event reason, message).
pub fn failure(inst: &GpuInstance, program: Option<&ProgramState>) -> (&'static str, String) {
    let logs = format!("`kubectl gpu logs {}` shows its output", inst.name_any());
    let Some(t) = termination(program) else {
        return ("Failed", "its program failed (see the pod's logs)".into());
    };
    match t.reason.as_deref() {
        Some("OOMKilled") => {
            let limit = inst
                .spec
                .resources
                .memory
                .as_ref()
                .map(|m| format!(" (its limit is {m})"))
                .unwrap_or_default();
            (
                "OOMKilled",
                format!("its program ran out of memory{limit} and was killed; {logs}"),
            )
        }
        Some(r @ ("ContainerCannotRun" | "StartError")) => (
            "ProgramFailed",
            format!(
                "its program could not start ({r}: {})",
                t.message.as_deref().unwrap_or("no message")
            ),
        ),
        r => (
            "ProgramFailed",
            format!(
                "its program exited with code {}{}; {logs}",
                t.exit_code,
                r.filter(|r| *r != "Error")
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ),
    }
}

/// Restarts, and the note for an Event when there are more than `before`.
pub fn restarts(program: Option<&ProgramState>, before: u32) -> (u32, Option<String>) {
    let Some(p) = program else {
        return (before, None);
    };
    if p.restarts <= before {
        return (p.restarts.max(before), None);
    }
    let how = match p.last_terminated.as_ref() {
        Some(t) if t.reason.as_deref() == Some("OOMKilled") => {
            "it ran out of memory and was killed".to_owned()
        }
        Some(t) => format!("it exited with code {}", t.exit_code),
        None => "it ended".to_owned(),
    };
    (
        p.restarts,
        Some(format!(
            "its program was started again (restart {}): {how}",
            p.restarts
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> GpuInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-u"},
            "spec": {"gpu": {"model": "m", "count": 1}, "image": "nope:1", "duration": "1h",
                     "resources": {"memory": "64Mi"}}
        }))
        .unwrap()
    }

    fn waiting(reason: &str) -> ProgramState {
        ProgramState {
            waiting: Some((reason.into(), Some("connection refused".into()))),
            ..Default::default()
        }
    }

    fn ended(code: i32, reason: &str) -> ProgramState {
        ProgramState {
            terminated: Some(Termination {
                exit_code: code,
                reason: Some(reason.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_failures_are_told_apart_from_other_waits() {
        assert!(
            !pull_failure(Some(&waiting("ErrImagePull")))
                .unwrap()
                .hopeless
        );
        assert!(
            !pull_failure(Some(&waiting("ImagePullBackOff")))
                .unwrap()
                .hopeless
        );
        assert!(
            pull_failure(Some(&waiting("InvalidImageName")))
                .unwrap()
                .hopeless
        );
        assert_eq!(pull_failure(Some(&waiting("ContainerCreating"))), None);
        assert_eq!(pull_failure(Some(&waiting("CrashLoopBackOff"))), None);
        assert_eq!(pull_failure(None), None);
        let f = pull_failure(Some(&waiting("ErrImagePull"))).unwrap();
        let msg = pull_failed_message(&inst(), &f, Duration::from_secs(30));
        assert!(
            msg.contains("nope:1") && msg.contains("30s") && msg.contains("refused"),
            "{msg}"
        );
    }

    #[test]
    fn a_failure_says_how_the_program_ended() {
        let (r, m) = failure(&inst(), Some(&ended(3, "Error")));
        assert_eq!(r, "ProgramFailed");
        assert!(
            m.contains("code 3") && m.contains("kubectl gpu logs train"),
            "{m}"
        );
        let (r, m) = failure(&inst(), Some(&ended(137, "OOMKilled")));
        assert_eq!(r, "OOMKilled");
        assert!(m.contains("64Mi"), "{m}");
        let (r, _) = failure(&inst(), None);
        assert_eq!(r, "Failed");
        assert_eq!(
            last_exit(Some(&ended(3, "Error"))).map(|e| e.exit_code),
            Some(3)
        );
    }

    #[test]
    fn restarts_are_counted_and_told_once() {
        let mut p = ended(1, "Error");
        p.last_terminated = p.terminated.take();
        p.restarts = 2;
        let (n, note) = restarts(Some(&p), 1);
        assert_eq!(n, 2);
        assert!(note.unwrap().contains("restart 2"));
        assert_eq!(restarts(Some(&p), 2), (2, None));
        assert_eq!(restarts(None, 2), (2, None));
    }
}
