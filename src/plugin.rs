//! `kubectl gpu`: the GPU cloud in a person's words — book (now or ahead), list, usage and
//! cost, free windows. Installed as the `kubectl-gpu` binary on the PATH, so kubectl finds
//! it as a plugin.

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};

use crate::Error;
use crate::api::v1::{GpuInstance, GpuUser, Phase, StartPolicy};
use crate::controller::calendar::{self, Calendar};
use crate::scheduler::calendar::show_time;

/// Book and watch GPUs of the gpu-cloud operator.
#[derive(Debug, Parser)]
#[command(name = "kubectl gpu", version, about)]
pub struct PluginCli {
    /// Namespace (default: the kubeconfig context's).
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

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Book GPUs: `kubectl gpu book NVIDIA-L4 --count 1 --for 4h`; ahead of time with
    /// `--at 2026-12-01T13:00:00Z` or `--at +2h`.
    Book {
        /// GPU model (as nodes label it in nvidia.com/gpu.product).
        model: String,
        /// How many GPUs (all on one node).
        #[arg(long, default_value_t = 1)]
        count: u32,
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
        /// How many GPUs (all on one node).
        #[arg(long, default_value_t = 1)]
        count: u32,
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
}

/// What `kubectl gpu` can fail with, besides the API.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A time that is neither RFC 3339 nor `+<duration>`.
    #[error(
        "invalid time {0:?}: write it as RFC 3339 (2026-12-01T13:00:00Z, 2026-12-01T14:00:00+01:00) or from now (+2h, +1h30m)"
    )]
    InvalidTime(String),
    /// A start in the past.
    #[error("--at {0} is in the past: leave --at out to start as soon as GPUs are free")]
    PastStart(String),
    /// A length that does not parse.
    #[error(transparent)]
    InvalidDuration(#[from] crate::api::duration::InvalidDuration),
    /// The controller has not published its calendar (or not in that namespace).
    #[error(
        "no GPU calendar in namespace {0:?} (ConfigMap gpu-cloud-calendar): is the gpu-cloud controller running there? \
         Name its namespace with --calendar-namespace or GPU_CLOUD_NAMESPACE"
    )]
    NoCalendar(String),
    /// The identity may not read the calendar.
    #[error(
        "you may not read the GPU calendar (ConfigMap gpu-cloud-calendar in {0:?}): the gpu-cloud chart's \
         Role gpu-cloud-calendar-reader lets every authenticated identity get it; is it installed?"
    )]
    CalendarForbidden(String),
    /// The calendar is not what this version of the plugin reads.
    #[error("the GPU calendar cannot be read: {0} (is the plugin as new as the controller?)")]
    BadCalendar(String),
}

/// `text` as a time: RFC 3339, or `+<duration>` from `now`; to the second.
pub fn parse_time(text: &str, now: Timestamp) -> Result<Timestamp, PluginError> {
    let bad = || PluginError::InvalidTime(text.to_owned());
    let t = match text.strip_prefix('+') {
        Some(rel) => {
            let d = crate::api::duration::parse(rel).map_err(|_| bad())?;
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
    pub async fn run(self) -> Result<(), Error> {
        let client = client(self.as_user.clone(), self.as_group.clone()).await?;
        let ns = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let mut out = std::io::stdout().lock();
        match self.command {
            PluginCommand::Book {
                model,
                count,
                duration,
                at,
                earliest,
                image,
                name,
                command,
            } => {
                crate::api::duration::parse(&duration).map_err(PluginError::from)?;
                let now = Timestamp::now();
                let start = at.as_deref().map(|a| parse_time(a, now)).transpose()?;
                if let (Some(t), Some(text)) = (start, at.as_deref())
                    && t <= now
                {
                    return Err(PluginError::PastStart(text.to_owned()).into());
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
                    count,
                    duration: &duration,
                    image: &image,
                    ahead,
                };
                let inst = book(&client, &ns, &booking, name, command).await?;
                match start {
                    None => writeln!(
                        out,
                        "booked {ns}/{}: {count} x {model} for {duration}",
                        inst.name_any()
                    )?,
                    Some(t) => writeln!(
                        out,
                        "booked {ns}/{}: {count} x {model} for {duration} from {}{}",
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
                    .map_err(Error::kube("list GpuInstances"))?;
                write!(out, "{}", instance_table(&list.items))?;
            }
            PluginCommand::Usage { user } => {
                usage(&client, &ns, self.namespace.is_some(), user, &mut out).await?;
            }
            PluginCommand::Slots {
                model,
                count,
                duration,
                from,
                show,
                calendar_namespace,
            } => {
                let length = crate::api::duration::parse(&duration).map_err(PluginError::from)?;
                let now = next_second(Timestamp::now());
                let from = from.as_deref().map(|f| parse_time(f, now)).transpose()?;
                let cal = read_calendar(&client, &calendar_namespace).await?;
                let text = slots_text(&cal, &model, count, length, from.unwrap_or(now), show, now);
                write!(out, "{text}")?;
            }
        }
        Ok(())
    }
}

/// A client as the kubeconfig says, acting as `as_user` (and `as_group`) when given.
async fn client(as_user: Option<String>, as_group: Vec<String>) -> Result<Client, Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    if let Some(user) = as_user {
        config.auth_info.impersonate = Some(user);
    }
    if !as_group.is_empty() {
        config.auth_info.impersonate_groups = Some(as_group);
    }
    Client::try_from(config).map_err(|e| Error::Config(e.to_string()))
}

/// What to book.
struct Booking<'a> {
    model: &'a str,
    count: u32,
    duration: &'a str,
    image: &'a str,
    /// Booked ahead: the start and what to do when that window is taken.
    ahead: Option<(Timestamp, StartPolicy)>,
}

async fn book(
    client: &Client,
    ns: &str,
    b: &Booking<'_>,
    name: Option<String>,
    command: Vec<String>,
) -> Result<GpuInstance, Error> {
    let metadata = match name {
        Some(n) => serde_json::json!({"name": n, "namespace": ns}),
        None => serde_json::json!({"generateName": "gi-", "namespace": ns}),
    };
    let mut spec = serde_json::json!({
        "gpu": {"model": b.model, "count": b.count}, "image": b.image, "command": command,
        "duration": b.duration
    });
    if let Some((start, policy)) = b.ahead {
        spec["startTime"] = serde_json::json!(start);
        spec["startPolicy"] = serde_json::json!(policy);
    }
    let inst: GpuInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance", "metadata": metadata, "spec": spec
    }))
    .map_err(|e| Error::Render(e.to_string()))?;
    Api::<GpuInstance>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &inst)
        .await
        .map_err(Error::kube("book a GpuInstance"))
}

/// `kubectl gpu usage`: the users' figures, cost and budgets, then the cost of each
/// instance in the user's namespace. A person who may not read GpuUsers (a plain user)
/// still gets their instances' cost.
async fn usage(
    client: &Client,
    ns: &str,
    ns_given: bool,
    user: Option<String>,
    out: &mut impl Write,
) -> Result<(), Error> {
    let api = Api::<GpuUser>::all(client.clone());
    let users = match &user {
        Some(u) => api.get(u).await.map(|u| vec![u]),
        None => api.list(&ListParams::default()).await.map(|l| l.items),
    };
    // A plain user may not list GpuUsers, but may read their own (the one whose
    // namespace this is).
    let users = match (users, &user, ns.strip_prefix("gpu-")) {
        (Err(kube::Error::Api(e)), None, Some(own)) if e.code == 403 => {
            api.get(own).await.map(|u| vec![u])
        }
        (users, _, _) => users,
    };
    let users = match users {
        Ok(users) => users,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            writeln!(
                out,
                "(you may not read this GpuUser, so no budget or totals here: your own is readable once the controller has provisioned you; run this in your namespace, gpu-<you>)"
            )?;
            vec![]
        }
        Err(e) => return Err(Error::kube("read GpuUsers")(e)),
    };
    if !users.is_empty() {
        write!(out, "{}", usage_table(&users))?;
        if let Some(t) = budget_table(&users) {
            write!(out, "\nGPU-hour budget\n{t}")?;
        }
    }
    // Instances: of the one user asked about, else of the namespace.
    let ns = match (&user, users.first()) {
        (Some(_), Some(u)) if !ns_given => u
            .status
            .as_ref()
            .and_then(|s| s.namespace.clone())
            .unwrap_or_else(|| ns.to_owned()),
        _ => ns.to_owned(),
    };
    match Api::<GpuInstance>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) if !list.items.is_empty() => {
            write!(out, "\nInstances in {ns}\n{}", cost_table(&list.items))?;
        }
        Ok(_) | Err(kube::Error::Api(_)) if user.is_none() && !ns_given => {}
        Ok(_) => writeln!(out, "\nno instances in {ns}")?,
        Err(e) => return Err(Error::kube("list GpuInstances")(e)),
    }
    Ok(())
}

async fn read_calendar(client: &Client, ns: &str) -> Result<Calendar, Error> {
    let cm = match Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(calendar::CONFIGMAP)
        .await
    {
        Ok(cm) => cm,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(PluginError::CalendarForbidden(ns.to_owned()).into());
        }
        Err(e) => return Err(Error::kube("get the GPU calendar")(e)),
    };
    let json = cm
        .and_then(|c| c.data)
        .and_then(|mut d| d.remove(calendar::KEY))
        .ok_or_else(|| PluginError::NoCalendar(ns.to_owned()))?;
    calendar::parse(&json).map_err(|e| PluginError::BadCalendar(e.to_string()).into())
}

/// The `slots` answer (pure): up to `show` windows of `count` GPUs of `model` for
/// `length`, from `from`, on the calendar seen at `now`; or why there is none.
pub fn slots_text(
    cal: &Calendar,
    model: &str,
    count: u32,
    length: Duration,
    from: Timestamp,
    show: usize,
    now: Timestamp,
) -> String {
    let snapshot = cal.to_snapshot(now);
    let slots =
        crate::scheduler::next_free_slots(&snapshot, model, count, Some(length), from, show);
    let len = jiff::SignedDuration::try_from(length).unwrap_or(jiff::SignedDuration::MAX);
    let mut out = format!(
        "{count} x {model} for {len:#}, from {} (calendar of {}):\n",
        show_time(from.max(now)),
        show_time(cal.generated_at)
    );
    if slots.is_empty() {
        let why = match cal.models.get(model) {
            None => {
                let known: Vec<&str> = cal.models.keys().map(String::as_str).collect();
                format!("no node has {model} GPUs (models: {})", known.join(", "))
            }
            Some(nodes) if nodes.iter().all(|n| n.allocatable < count) => {
                let largest = nodes.iter().map(|n| n.allocatable).max().unwrap_or(0);
                format!("no {model} node has {count} GPUs (the largest has {largest})")
            }
            Some(nodes) if !nodes.iter().any(|n| n.eligible) => {
                format!("no {model} node takes new work now (not ready, cordoned or tainted)")
            }
            Some(_) => "no free window: the GPUs are held with no end in sight".to_owned(),
        };
        out.push_str(&why);
        out.push('\n');
        return out;
    }
    let mut rows = vec![["START", "END", "NODE"].map(String::from).to_vec()];
    for (start, node) in slots {
        let end = start
            .checked_add(len)
            .map_or_else(|_| "-".to_owned(), show_time);
        rows.push(vec![show_time(start), end, node]);
    }
    out.push_str(&render(&rows));
    out
}

/// The `ls` table (pure). A booking ahead shows its node and start once its window is
/// granted (Reserved), and its requested start before.
pub fn instance_table(items: &[GpuInstance]) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "MODEL",
            "GPUS",
            "PHASE",
            "NODE",
            "START",
            "GPU-HOURS",
            "UTIL%",
            "WAITING",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in items {
        let s = i.status.clone().unwrap_or_default();
        let usage = s.usage.as_ref();
        let reserved = s.phase == Some(Phase::Reserved);
        let node = if reserved {
            s.reserved_node.clone()
        } else {
            s.node_name.clone()
        };
        let start = if reserved {
            s.starts_at.or(i.spec.start_time)
        } else {
            s.started_at.or(i.spec.start_time)
        };
        rows.push(vec![
            i.namespace().unwrap_or_default(),
            i.name_any(),
            i.spec.gpu.model.clone(),
            i.spec.gpu.count.to_string(),
            s.phase.map_or("-", |p| p.as_str()).to_owned(),
            node.unwrap_or_else(|| "-".into()),
            start.map_or_else(|| "-".into(), show_time),
            usage.map_or("-".into(), |u| format!("{:.2}", u.gpu_seconds / 3600.0)),
            usage.map_or("-".into(), |u| format!("{:.0}", u.avg_utilization)),
            s.message.clone().unwrap_or_default(),
        ]);
    }
    render(&rows)
}

/// The `usage` table (pure): lifetime and this month, with this month's cost.
pub fn usage_table(users: &[GpuUser]) -> String {
    let mut rows = vec![
        [
            "USER",
            "GPUS-NOW",
            "GPU-HOURS",
            "KWH",
            "PERIOD",
            "GPU-HOURS(PERIOD)",
            "KWH(PERIOD)",
            "COST(PERIOD)",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in users {
        let s = u.status.clone().unwrap_or_default();
        let usage = s.usage.unwrap_or_default();
        rows.push(vec![
            u.name_any(),
            s.gpus_in_use.to_string(),
            format!("{:.2}", usage.lifetime.gpu_hours),
            format!("{:.3}", usage.lifetime.energy_kwh),
            if usage.period.is_empty() {
                "-".into()
            } else {
                usage.period.clone()
            },
            format!("{:.2}", usage.current_period.gpu_hours),
            format!("{:.3}", usage.current_period.energy_kwh),
            s.cost.as_ref().map_or_else(
                || "-".into(),
                |c| format!("{:.2} {}", c.current_period, c.currency),
            ),
        ]);
    }
    render(&rows)
}

/// The GPU-hour budgets of the users that have one (pure); `None` when none has.
pub fn budget_table(users: &[GpuUser]) -> Option<String> {
    let mut rows = vec![
        [
            "USER",
            "USED",
            "REMAINING",
            "LIMIT",
            "PERIOD-START",
            "RENEWS",
            "EXHAUSTED",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for u in users {
        let Some(b) = u.status.as_ref().and_then(|s| s.budget.as_ref()) else {
            continue;
        };
        rows.push(vec![
            u.name_any(),
            format!("{:.2}", b.used_gpu_hours),
            format!("{:.2}", b.remaining_gpu_hours),
            crate::policy::hours_text(b.limit_gpu_hours),
            show_time(b.period_start),
            show_time(b.period_end),
            if b.exhausted { "yes" } else { "no" }.to_owned(),
        ]);
    }
    (rows.len() > 1).then(|| render(&rows))
}

/// The cost of each instance, from its status (pure).
pub fn cost_table(items: &[GpuInstance]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "MODEL",
            "GPUS",
            "PHASE",
            "DURATION",
            "GPU-HOURS",
            "PLANNED",
            "ACTUAL",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in items {
        let s = i.status.clone().unwrap_or_default();
        let cost = s.cost.as_ref();
        let money = |x: Option<f64>| match (x, cost) {
            (Some(x), Some(c)) => format!("{x:.2} {}", c.currency),
            _ => "-".into(),
        };
        rows.push(vec![
            i.name_any(),
            i.spec.gpu.model.clone(),
            i.spec.gpu.count.to_string(),
            s.phase.map_or("-", |p| p.as_str()).to_owned(),
            i.spec.duration.clone(),
            s.usage
                .as_ref()
                .map_or("-".into(), |u| format!("{:.2}", u.gpu_seconds / 3600.0)),
            money(cost.map(|c| c.planned)),
            money(cost.and_then(|c| c.actual)),
        ]);
    }
    render(&rows)
}

fn render(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_show_phase_usage_and_reasons() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "1h"},
            "status": {"phase": "Running", "nodeName": "gpu-l4-0", "startedAt": "2026-11-25T10:30:00Z",
                       "usage": {"gpuSeconds": 5400.0, "avgUtilization": 42.4, "peakMemoryBytes": 0,
                                 "energyJoules": 0.0, "sampledAt": "2026-11-25T12:00:00Z", "source": "simulated"}}
        }))
        .unwrap();
        let t = instance_table(&[inst]);
        assert_eq!(
            t.lines().nth(1).unwrap(),
            "gpu-alice  train  NVIDIA-L4  1     Running  gpu-l4-0  2026-11-25T10:30Z  1.50       42"
        );
        let user: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "alice"}, "spec": {},
            "status": {"gpusInUse": 1, "instances": 1, "usage": {"period": "2026-11",
                "lifetime": {"gpuHours": 12.5, "energyKwh": 3.25, "instances": 4},
                "currentPeriod": {"gpuHours": 2.0, "energyKwh": 0.5, "instances": 1}}}
        }))
        .unwrap();
        let u = usage_table(&[user]);
        assert!(
            u.lines()
                .nth(1)
                .unwrap()
                .starts_with("alice  1         12.50      3.250  2026-11  2.00"),
            "{u}"
        );
    }

    #[test]
    fn reserved_bookings_show_their_node_and_start() {
        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "later", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 1}, "image": "x", "duration": "4h",
                     "startTime": "2026-12-01T13:00:00Z"},
            "status": {"phase": "Reserved", "reservedNode": "gpu-l4-1", "startsAt": "2026-12-01T13:00:00Z"}
        }))
        .unwrap();
        let t = instance_table(&[inst]);
        assert_eq!(
            t.lines().nth(1).unwrap(),
            "gpu-alice  later  NVIDIA-L4  1     Reserved  gpu-l4-1  2026-12-01T13:00Z  -          -"
        );
    }

    #[test]
    fn budgets_and_costs_read_plainly() {
        let user: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "alice"}, "spec": {},
            "status": {"budget": {"limitGpuHours": 100.0, "usedGpuHours": 12.25, "remainingGpuHours": 87.75,
                "periodStart": "2026-11-01T00:00:00Z", "periodEnd": "2026-12-01T00:00:00Z", "exhausted": false},
                "cost": {"period": "2026-11", "currentPeriod": 30.626, "currency": "EUR"}}
        }))
        .unwrap();
        let b = budget_table(std::slice::from_ref(&user)).unwrap();
        assert_eq!(
            b.lines().nth(1).unwrap(),
            "alice  12.25  87.75      100    2026-11-01T00:00Z  2026-12-01T00:00Z  no"
        );
        assert!(
            usage_table(std::slice::from_ref(&user))
                .lines()
                .nth(1)
                .unwrap()
                .ends_with("30.63 EUR")
        );
        let plain: GpuUser = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuUser", "metadata": {"name": "bob"}, "spec": {}
        }))
        .unwrap();
        assert!(budget_table(&[plain]).is_none());

        let inst: GpuInstance = serde_json::from_value(json!({
            "apiVersion": "gpu-cloud.io/v1", "kind": "GpuInstance",
            "metadata": {"name": "train", "namespace": "gpu-alice"},
            "spec": {"gpu": {"model": "NVIDIA-L4", "count": 2}, "image": "x", "duration": "4h"},
            "status": {"phase": "Running", "cost": {"planned": 6.4, "actual": 1.234, "currency": "EUR"}}
        }))
        .unwrap();
        assert_eq!(
            cost_table(&[inst]).lines().nth(1).unwrap(),
            "train  NVIDIA-L4  2     Running  4h        -          6.40 EUR  1.23 EUR"
        );
    }

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

    #[test]
    fn slots_come_from_the_calendar_or_say_why_not() {
        let cal: Calendar = serde_json::from_value(json!({
            "generatedAt": "2026-11-25T12:00:00Z",
            "models": {"NVIDIA-L4": [
                {"name": "l4-0", "allocatable": 2, "used": 2, "releases": [[1795000000, 2]]},
                {"name": "l4-1", "allocatable": 1, "eligible": false}]}
        }))
        .unwrap();
        let now: Timestamp = "2026-11-18T00:00:00Z".parse().unwrap();
        let free_at = Timestamp::from_second(1_795_000_000).unwrap();
        let four_h = Duration::from_secs(4 * 3600);
        let text = slots_text(&cal, "NVIDIA-L4", 2, four_h, now, 3, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["START", "END", "NODE"]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                show_time(free_at).as_str(),
                &show_time(
                    free_at
                        .checked_add(jiff::SignedDuration::from_hours(4))
                        .unwrap()
                ),
                "l4-0"
            ],
            "{text}"
        );
        assert!(
            slots_text(&cal, "NVIDIA-A100", 1, four_h, now, 3, now)
                .contains("no node has NVIDIA-A100 GPUs (models: NVIDIA-L4)")
        );
        assert!(
            slots_text(&cal, "NVIDIA-L4", 3, four_h, now, 3, now)
                .contains("no NVIDIA-L4 node has 3 GPUs (the largest has 2)")
        );
    }
}
