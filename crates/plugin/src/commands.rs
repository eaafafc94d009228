//! The command line of `kubectl gpu`, and what each command does with it.

use std::io::Write;

use clap::{Parser, Subcommand};
use gpu_cloud_api::time::show_time;
use gpu_cloud_api::v1::{GpuInstance, StartPolicy};
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::PluginError;
use crate::actions::{self, Booking};
use crate::connect::{Connection, Identity, kubectl_args};
use crate::tables::{instance_table, slots_text};
use gpu_cloud_core::scheduler::{SlotWant, Topology};

/// Book and watch GPUs of the gpu-cloud operator.
#[derive(Debug, Parser)]
#[command(name = "kubectl gpu", version, about)]
pub struct PluginCli {
    /// Namespace (default: the kubeconfig context's if it names one, else your own user
    /// namespace, from the GpuUser that names you).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Act as this user, as `kubectl --as` does (impersonation).
    #[arg(long = "as", global = true)]
    as_user: Option<String>,
    /// Act as a member of this group too, as `kubectl --as-group` does (repeatable).
    #[arg(long = "as-group", global = true)]
    as_group: Vec<String>,
    #[command(subcommand)]
    command: PluginCommand,
}

/// What a booking, or a slot search, asks for beside its model.
#[derive(Debug, clap::Args)]
struct Shape {
    /// How many GPUs (all on one node; on each node of a gang), or slices with `--slice`.
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// A gang: this many nodes with `--count` GPUs each, started together (one pod per
    /// node, with MASTER_ADDR, WORLD_SIZE, NODE_RANK for torchrun).
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// A slice of a GPU instead of whole GPUs: a MIG profile (`1g.10gb`, `3g.40gb`) or
    /// `shared` (a time-sliced share); `--count` slices.
    #[arg(long, conflicts_with = "nodes")]
    slice: Option<String>,
    /// A gang's nodes all in one topology domain (a zone, an NVLink clique), or wait.
    #[arg(long, requires = "nodes")]
    one_domain: bool,
}

impl Shape {
    /// The slot search (or the booking's words) for `model` over `duration`.
    fn want<'a>(&'a self, model: &'a str, duration: Option<std::time::Duration>) -> SlotWant<'a> {
        SlotWant {
            model,
            slice: self.slice.as_deref(),
            count: self.count,
            nodes: self.nodes,
            topology: if self.one_domain {
                Topology::Required
            } else {
                Topology::Preferred
            },
            duration,
        }
    }
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Book GPUs: `kubectl gpu book NVIDIA-L4 --count 1 --for 4h`; ahead of time with
    /// `--at 2026-12-01T13:00:00Z` or `--at +2h`.
    Book {
        /// GPU model (as nodes label it in nvidia.com/gpu.product).
        model: String,
        /// GPUs per node, a gang's nodes, a slice.
        #[command(flatten)]
        shape: Shape,
        /// Booking length (`30m`, `4h`, `1h30m`).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        /// Book ahead: when it starts, RFC 3339 (`2026-12-01T13:00:00Z`) or from now
        /// (`+2h`, `+1h30m`). Its GPUs are held for it from then (phase Reserved).
        #[arg(long)]
        at: Option<String>,
        /// If the window at `--at` is taken, book the earliest free one after it
        /// (startPolicy EarliestAvailable) instead of being refused.
        #[arg(long, requires = "at")]
        earliest: bool,
        /// Container image to run.
        #[arg(long, default_value = "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04")]
        image: String,
        /// Name of the instance (default: generated).
        #[arg(long)]
        name: Option<String>,
        /// Command to run, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
        /// Namespace of the gpu-cloud controller, where it publishes the calendar (read to
        /// warn when no node has the model).
        #[arg(long, env = "GPU_CLOUD_NAMESPACE", default_value = "gpu-cloud")]
        calendar_namespace: String,
    },
    /// List instances with their usage; bookings ahead with their start.
    Ls {
        /// In every namespace you may read.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// GPU-hours, energy and cost per user (lifetime and this month), the GPU-hour budget,
    /// and the cost of each instance.
    Usage {
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
    },
    /// The next free windows for a booking: `kubectl gpu slots NVIDIA-H100-80GB-HBM3
    /// --count 4 --for 8h`. Read from the calendar the controller publishes, which names
    /// no one's bookings.
    Slots {
        /// GPU model.
        model: String,
        /// GPUs per node, a gang's nodes, a slice.
        #[command(flatten)]
        shape: Shape,
        /// Window length (`30m`, `4h`, `1h30m`).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
        /// Not before this time: RFC 3339 or from now (`+2h`). Default: now.
        #[arg(long)]
        from: Option<String>,
        /// How many windows to show.
        #[arg(long, default_value_t = 5)]
        show: usize,
        /// Namespace of the gpu-cloud controller, where it publishes the calendar.
        #[arg(long, env = "GPU_CLOUD_NAMESPACE", default_value = "gpu-cloud")]
        calendar_namespace: String,
    },
    /// A shell in an instance's container (`kubectl gpu shell nb`), or one command in it
    /// (`kubectl gpu shell nb -- nvidia-smi`). Runs `kubectl exec` on its pod.
    Shell {
        /// The GpuInstance.
        instance: String,
        /// Command to run instead of a shell, after `--`.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Forward local ports to an instance (`kubectl gpu forward nb 8888`, or `9000:8888`
    /// for local port 9000). Runs `kubectl port-forward` on its pod until interrupted.
    Forward {
        /// The GpuInstance.
        instance: String,
        /// Ports: `PORT` or `LOCAL:REMOTE`.
        #[arg(required = true)]
        ports: Vec<String>,
        /// Local addresses to listen on (default: localhost).
        #[arg(long)]
        address: Option<String>,
    },
    /// An instance's logs (`kubectl gpu logs nb -f`). Runs `kubectl logs` on its pod.
    Logs {
        /// The GpuInstance.
        instance: String,
        /// Follow the log as it grows.
        #[arg(short = 'f', long)]
        follow: bool,
        /// The logs of the program's previous run (after a restart).
        #[arg(short = 'p', long)]
        previous: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<i64>,
    },
    /// The web dashboard on a port of this machine (`kubectl gpu dashboard`, then open the
    /// address it prints): what your own token may see, through the apiserver.
    Dashboard {
        /// Local port (0: any free one).
        #[arg(long, default_value_t = 8090)]
        port: u16,
        /// Local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// Namespace of the gpu-cloud release (its Service gpu-cloud-dashboard).
        #[arg(long, env = "GPU_CLOUD_NAMESPACE", default_value = "gpu-cloud")]
        release_namespace: String,
        /// A file holding the bearer token to sign in with (default: the kubeconfig's).
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
}

/// `kubectl gpu dashboard`: signs in (the kubeconfig's token, or `token_file`'s), then
/// serves the pages on `listen` until Ctrl-C.
async fn open_dashboard(
    ns: String,
    token_file: Option<&std::path::Path>,
    listen: std::net::SocketAddr,
) -> Result<(), PluginError> {
    use crate::dashboard;
    let mut config = kube::Config::infer().await?;
    // A dashboard that is down answers 503 at once; the client's retries would hide it
    // for minutes.
    config.default_retry = false;
    let token = match token_file {
        Some(path) => dashboard::read_token_file(path)?,
        None => dashboard::bearer_token(&config.auth_info)?,
    };
    let client = kube::Client::try_from(config).map_err(PluginError::Client)?;
    let who = dashboard::sign_in(&client, &ns, &token).await?;
    let seeing = if who.operator {
        "everything (operator)"
    } else {
        "your own users and instances"
    };
    dashboard::serve(client, ns.clone(), token, listen, |addr| {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "gpu-cloud dashboard (namespace {ns}) for {}, showing {seeing}:\n  http://{addr}/\nCtrl-C to stop.",
            who.name
        )?;
        out.flush()?;
        Ok(())
    })
    .await
}

/// Finds `instance`'s pod (as the caller: a refusal is theirs) and hands `connection` over
/// to kubectl, with the terminal; returns when kubectl does.
async fn connect(
    client: &kube::Client,
    ns: &str,
    instance: &str,
    who: &Identity,
    connection: &Connection,
) -> Result<(), PluginError> {
    let inst = Api::<GpuInstance>::namespaced(client.clone(), ns)
        .get(instance)
        .await
        .map_err(PluginError::kube("read the GpuInstance"))?;
    let need_running = !matches!(connection, Connection::Logs { .. });
    let target = crate::connect::target(&inst, need_running)?;
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let mut command = std::process::Command::new(&kubectl);
    command.args(kubectl_args(&target, who, connection));
    // kubectl takes this process's place, so that a signal to it (^C, a supervisor's
    // SIGTERM) reaches kubectl and no port-forward outlives the plugin. `exec` returns only
    // when kubectl could not be started.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let source = command.exec();
        Err(PluginError::NoKubectl { kubectl, source })
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .map_err(|source| PluginError::NoKubectl { kubectl, source })?;
        match status.code() {
            Some(0) => Ok(()),
            Some(code) => Err(PluginError::KubectlFailed(code)),
            None => Err(PluginError::KubectlFailed(130)),
        }
    }
}

/// `text` as a time: RFC 3339, or `+<duration>` from `now`; to the second.
pub fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, PluginError> {
    let bad = || PluginError::InvalidTime(text.to_owned());
    let t = match text.strip_prefix('+') {
        Some(rel) => {
            let d = gpu_cloud_api::time::parse_duration(rel).map_err(|_| bad())?;
            let d = jiff::SignedDuration::try_from(d).map_err(|_| bad())?;
            now.checked_add(d).map_err(|_| bad())?
        }
        None => text.parse::<Timestamp>().map_err(|_| bad())?,
    };
    Timestamp::from_second(t.as_second()).map_err(|_| bad())
}

/// `now` rounded up to the second.
fn next_second(now: Timestamp) -> Timestamp {
    let s = now.as_second();
    let s = if now.subsec_nanosecond() > 0 {
        s + 1
    } else {
        s
    };
    Timestamp::from_second(s).unwrap_or(now)
}

impl PluginCli {
    /// Runs the chosen command.
    pub async fn run(self) -> Result<(), PluginError> {
        if let PluginCommand::Dashboard {
            port,
            address,
            release_namespace,
            token_file,
        } = &self.command
        {
            if self.as_user.is_some() || !self.as_group.is_empty() {
                return Err(PluginError::DashboardImpersonation);
            }
            let listen = std::net::SocketAddr::new(*address, *port);
            return open_dashboard(release_namespace.clone(), token_file.as_deref(), listen).await;
        }
        let client = actions::client(self.as_user.clone(), self.as_group.clone()).await?;
        // As kubectl: -n, else the context's namespace; where that is only the `default`
        // fallback, the caller's own user namespace (nobody books in `default`).
        let ns = match (&self.namespace, client.default_namespace()) {
            (Some(ns), _) => ns.clone(),
            (None, "default") if !matches!(self.command, PluginCommand::Slots { .. }) => {
                actions::own_namespace(&client)
                    .await
                    .unwrap_or_else(|| "default".to_owned())
            }
            (None, context) => context.to_owned(),
        };
        let who = Identity {
            as_user: self.as_user.clone(),
            as_group: self.as_group.clone(),
        };
        let mut out = std::io::stdout().lock();
        match self.command {
            PluginCommand::Book {
                model,
                shape,
                duration,
                at,
                earliest,
                image,
                name,
                command,
                calendar_namespace,
            } => {
                gpu_cloud_api::time::parse_duration(&duration)?;
                let now = Timestamp::now();
                let start = at.as_deref().map(|a| parse_time(a, now)).transpose()?;
                if let (Some(t), Some(text)) = (start, at.as_deref())
                    && t <= now
                {
                    return Err(PluginError::PastStart(text.to_owned()));
                }
                let ahead = start.map(|t| {
                    (
                        t,
                        if earliest {
                            StartPolicy::EarliestAvailable
                        } else {
                            StartPolicy::Exact
                        },
                    )
                });
                let booking = Booking {
                    model: &model,
                    count: shape.count,
                    nodes: shape.nodes,
                    slice: shape.slice.as_deref(),
                    one_domain: shape.one_domain,
                    duration: &duration,
                    image: &image,
                    ahead,
                };
                let inst = actions::book(&client, &ns, &booking, name, command).await?;
                // Best effort: without the calendar the booking's own status says it.
                if let Ok(cal) = actions::read_calendar(&client, &calendar_namespace).await
                    && let Some(w) = crate::tables::unknown_model_warning(&cal, &model)
                {
                    eprintln!("{w}");
                }
                let what = crate::tables::booking_text(&shape.want(&model, None));
                match start {
                    None => writeln!(
                        out,
                        "booked {ns}/{}: {what} for {duration}",
                        inst.name_any()
                    )?,
                    Some(t) => writeln!(
                        out,
                        "booked {ns}/{}: {what} for {duration} from {}{}",
                        inst.name_any(),
                        show_time(t),
                        if earliest {
                            " (or the earliest free window after it)"
                        } else {
                            ""
                        }
                    )?,
                }
                writeln!(
                    out,
                    "watch it: kubectl get gi -n {ns} {} -w",
                    inst.name_any()
                )?;
            }
            PluginCommand::Ls { all_namespaces } => {
                let api = if all_namespaces {
                    Api::<GpuInstance>::all(client)
                } else {
                    Api::<GpuInstance>::namespaced(client, &ns)
                };
                let list = api
                    .list(&ListParams::default())
                    .await
                    .map_err(PluginError::kube("list GpuInstances"))?;
                write!(out, "{}", instance_table(&list.items))?;
            }
            PluginCommand::Usage { user } => {
                actions::usage(&client, &ns, self.namespace.is_some(), user, &mut out).await?;
            }
            PluginCommand::Slots {
                model,
                shape,
                duration,
                from,
                show,
                calendar_namespace,
            } => {
                let length = gpu_cloud_api::time::parse_duration(&duration)?;
                let now = next_second(Timestamp::now());
                let from = from.as_deref().map(|f| parse_time(f, now)).transpose()?;
                let cal = actions::read_calendar(&client, &calendar_namespace).await?;
                let want = shape.want(&model, Some(length));
                let text = slots_text(&cal, &want, from.unwrap_or(now), show, now);
                write!(out, "{text}")?;
            }
            PluginCommand::Shell { instance, command } => {
                let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
                let connection = Connection::Shell { command, tty };
                drop(out);
                connect(&client, &ns, &instance, &who, &connection).await?;
            }
            PluginCommand::Forward {
                instance,
                ports,
                address,
            } => {
                let connection = Connection::Forward { ports, address };
                drop(out);
                connect(&client, &ns, &instance, &who, &connection).await?;
            }
            PluginCommand::Logs {
                instance,
                follow,
                previous,
                tail,
            } => {
                let connection = Connection::Logs {
                    follow,
                    previous,
                    tail,
                };
                drop(out);
                connect(&client, &ns, &instance, &who, &connection).await?;
            }
            // Served before a client with impersonation is built.
            PluginCommand::Dashboard { .. } => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_or_from_now() {
        let now: Timestamp = "2026-11-25T12:00:00.5Z".parse().unwrap();
        assert_eq!(
            parse_time("+2h", now).unwrap(),
            "2026-11-25T14:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("2026-12-01T14:00:00+01:00", now).unwrap(),
            "2026-12-01T13:00:00Z".parse::<Timestamp>().unwrap()
        );
        for bad in ["tomorrow", "+2d", "2026-12-01", "+"] {
            assert!(
                matches!(parse_time(bad, now), Err(PluginError::InvalidTime(_))),
                "{bad}"
            );
        }
    }
}
