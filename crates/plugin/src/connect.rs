//! Connecting to an instance: a shell in its container, a port forwarded to it, its logs.
//!
//! kubectl already does exec, attach, port-forward and logs well (terminal handling,
//! SPDY/WebSocket upgrades, reconnects), and it is on the PATH of every plugin user (it is
//! what runs the plugin), so `kubectl gpu shell|forward|logs` finds the instance's pod and
//! hands over to kubectl with the caller's namespace and identity. What is decided here is
//! pure: which pod, or why there is none, and kubectl's arguments.

use gpu_cloud_api::v1::{GpuInstance, Phase};
use kube::ResourceExt;

/// The container gpu-cloud runs an instance's program in (see the controller's pod.rs).
pub const CONTAINER: &str = "main";

/// Without a command, `shell` starts bash where the image has it, else sh.
pub const DEFAULT_SHELL: [&str; 3] = [
    "sh",
    "-c",
    "command -v bash >/dev/null 2>&1 && exec bash || exec sh",
];

/// Why an instance has no pod to connect to, in words that say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPod {
    /// Not placed yet (Pending, Queued, Reserved).
    #[error(
        "instance {name} is {phase}{why}: it has no pod yet; watch it with `kubectl get gi {name} -w`"
    )]
    NotYet {
        name: String,
        phase: &'static str,
        why: String,
    },
    /// Finished: its pod is gone, and with it the logs.
    #[error(
        "instance {name} has finished ({phase}{why}): its pod is gone; `kubectl describe gi {name}` shows how it ended"
    )]
    Finished {
        name: String,
        phase: &'static str,
        why: String,
    },
    /// Placed, but the pod is still starting (e.g. its image is being pulled).
    #[error(
        "instance {name} is Scheduled on {node} but its program is not running yet{why}; try again when `kubectl get gi {name}` says Running"
    )]
    Starting {
        name: String,
        node: String,
        why: String,
    },
}

/// What a connection needs: the instance's pod, and whether it is running (logs of a
/// starting pod are worth reading, a shell in one is not possible).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub running: bool,
}

/// The pod of `inst`, or why there is none. `need_running`: exec and port-forward need a
/// running container; logs only a pod.
pub fn target(inst: &GpuInstance, need_running: bool) -> Result<Target, NoPod> {
    let status = inst.status.clone().unwrap_or_default();
    let name = inst.name_any();
    let why = status
        .message
        .as_deref()
        .filter(|m| !m.is_empty())
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::Pending);
    match phase {
        Phase::Pending | Phase::Queued | Phase::Reserved => Err(NoPod::NotYet {
            name,
            phase: phase.as_str(),
            why,
        }),
        Phase::Succeeded | Phase::Failed | Phase::Expired | Phase::Stopped => {
            Err(NoPod::Finished {
                name,
                phase: phase.as_str(),
                why,
            })
        }
        Phase::Scheduled | Phase::Running => {
            let running = phase == Phase::Running;
            match status.pod_name {
                Some(pod) if running || !need_running => Ok(Target {
                    namespace: inst.namespace().unwrap_or_default(),
                    pod,
                    running,
                }),
                _ => Err(NoPod::Starting {
                    name,
                    node: status.node_name.unwrap_or_else(|| "a node".to_owned()),
                    why,
                }),
            }
        }
    }
}

/// Who kubectl acts as: the plugin's own `--as` and `--as-group`, passed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub as_user: Option<String>,
    pub as_group: Vec<String>,
}

/// What to do with the instance's pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// A command in its container (a shell without one); `tty`: a terminal is attached.
    Shell { command: Vec<String>, tty: bool },
    /// Local ports forwarded to the pod (`8888`, `9000:8888`); `address`: where to listen.
    Forward {
        ports: Vec<String>,
        address: Option<String>,
    },
    /// Its logs: `follow` as `kubectl logs -f`, `previous` the last restart's.
    Logs {
        follow: bool,
        previous: bool,
        tail: Option<i64>,
    },
}

/// kubectl's arguments for `connection` to `target` as `who`.
pub fn kubectl_args(target: &Target, who: &Identity, connection: &Connection) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(user) = &who.as_user {
        args.push(format!("--as={user}"));
    }
    for group in &who.as_group {
        args.push(format!("--as-group={group}"));
    }
    args.push(format!("--namespace={}", target.namespace));
    match connection {
        Connection::Shell { command, tty } => {
            args.extend(["exec".into(), "-i".into()]);
            if *tty {
                args.push("-t".into());
            }
            args.extend([
                target.pod.clone(),
                "-c".into(),
                CONTAINER.into(),
                "--".into(),
            ]);
            if command.is_empty() {
                args.extend(DEFAULT_SHELL.map(String::from));
            } else {
                args.extend(command.iter().cloned());
            }
        }
        Connection::Forward { ports, address } => {
            args.push("port-forward".into());
            if let Some(a) = address {
                args.push(format!("--address={a}"));
            }
            args.push(format!("pod/{}", target.pod));
            args.extend(ports.iter().cloned());
        }
        Connection::Logs {
            follow,
            previous,
            tail,
        } => {
            args.extend([
                "logs".into(),
                target.pod.clone(),
                "-c".into(),
                CONTAINER.into(),
            ]);
            if *follow {
                args.push("-f".into());
            }
            if *previous {
                args.push("--previous".into());
            }
            if let Some(n) = tail {
                args.push(format!("--tail={n}"));
            }
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inst(status: serde_json::Value) -> GpuInstance {
        serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "nb", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "M", "count": 1}, "image": "x", "duration": "1h"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn only_a_placed_instance_has_a_pod_and_only_a_running_one_takes_a_shell() {
        let running = inst(json!({"phase": "Running", "podName": "nb-x", "nodeName": "n"}));
        let t = target(&running, true).unwrap();
        assert_eq!(
            (t.namespace.as_str(), t.pod.as_str(), t.running),
            ("gpu-alice", "nb-x", true)
        );
        let pulling = inst(
            json!({"phase": "Scheduled", "podName": "nb-x", "nodeName": "n",
                                  "message": "pulling image x"}),
        );
        assert!(target(&pulling, false).is_ok(), "logs of a starting pod");
        let e = target(&pulling, true).unwrap_err().to_string();
        assert!(
            e.contains("Scheduled on n") && e.contains("pulling image x"),
            "{e}"
        );
        let queued = inst(json!({"phase": "Queued", "message": "no free NVIDIA-L4"}));
        let e = target(&queued, false).unwrap_err().to_string();
        assert!(
            e.contains("is Queued: no free NVIDIA-L4") && e.contains("-w"),
            "{e}"
        );
        assert!(matches!(
            target(&inst(json!({})), true),
            Err(NoPod::NotYet {
                phase: "Pending",
                ..
            })
        ));
        for phase in ["Succeeded", "Failed", "Expired", "Stopped"] {
            let done = inst(json!({"phase": phase, "podName": "nb-x"}));
            assert!(
                matches!(target(&done, false), Err(NoPod::Finished { .. })),
                "{phase}"
            );
        }
    }

    #[test]
    fn kubectl_is_told_the_pod_container_namespace_and_identity() {
        let t = Target {
            namespace: "gpu-alice".into(),
            pod: "nb-x".into(),
            running: true,
        };
        let who = Identity {
            as_user: Some("alice".into()),
            as_group: vec!["team".into()],
        };
        let shell = kubectl_args(
            &t,
            &who,
            &Connection::Shell {
                command: vec![],
                tty: true,
            },
        );
        assert_eq!(
            shell[..8],
            [
                "--as=alice",
                "--as-group=team",
                "--namespace=gpu-alice",
                "exec",
                "-i",
                "-t",
                "nb-x",
                "-c"
            ]
        );
        assert_eq!(shell[8..10], ["main", "--"]);
        assert_eq!(shell[10..], DEFAULT_SHELL);
        let cmd = kubectl_args(
            &t,
            &Identity::default(),
            &Connection::Shell {
                command: vec!["nvidia-smi".into()],
                tty: false,
            },
        );
        assert_eq!(
            cmd,
            [
                "--namespace=gpu-alice",
                "exec",
                "-i",
                "nb-x",
                "-c",
                "main",
                "--",
                "nvidia-smi"
            ]
        );
        let fwd = kubectl_args(
            &t,
            &Identity::default(),
            &Connection::Forward {
                ports: vec!["9000:8888".into()],
                address: None,
            },
        );
        assert_eq!(
            fwd,
            [
                "--namespace=gpu-alice",
                "port-forward",
                "pod/nb-x",
                "9000:8888"
            ]
        );
        let logs = kubectl_args(
            &t,
            &Identity::default(),
            &Connection::Logs {
                follow: true,
                previous: false,
                tail: Some(20),
            },
        );
        assert_eq!(
            logs,
            [
                "--namespace=gpu-alice",
                "logs",
                "nb-x",
                "-c",
                "main",
                "-f",
                "--tail=20"
            ]
        );
    }
}
