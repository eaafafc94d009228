//! Which pod a process belongs to, from `/proc/<pid>/cgroup` (pure parsing).
//!
//! Handles cgroup v1 and v2, the systemd and cgroupfs drivers, and containerd, CRI-O and
//! Docker naming. The pod UID appears as `pod<uid>` (cgroupfs, dashes kept) or as
//! `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).

/// The pod UID (with dashes) found in the contents of a `/proc/<pid>/cgroup` file.
pub fn pod_uid(cgroup_file: &str) -> Option<String> {
    cgroup_file.lines().find_map(|line| {
        // hierarchy-ID:controllers:path; v2 has the single line `0::/path`.
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').find_map(uid_in_segment)
    })
}

fn uid_in_segment(segment: &str) -> Option<String> {
    let segment = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = segment.rfind("pod")?;
    let candidate = &segment[at + 3..];
    let uid = candidate.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

fn is_uid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f3c2d1e-aaaa-4bbb-8ccc-0123456789ab";

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../../tests/fixtures/cgroup/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn finds_the_pod_uid_under_every_layout() {
        for name in [
            "v2-systemd-containerd",
            "v2-systemd-crio",
            "v2-cgroupfs-containerd",
            "v1-cgroupfs-docker",
            "v1-systemd-containerd",
            "v1-cgroupfs-crio",
        ] {
            assert_eq!(pod_uid(&fixture(name)).as_deref(), Some(UID), "{name}");
        }
    }

    #[test]
    fn processes_outside_pods_have_none() {
        assert_eq!(pod_uid(&fixture("v2-host-process")), None);
        assert_eq!(pod_uid("0::/system.slice/podman.service\n"), None);
        assert_eq!(pod_uid(""), None);
    }
}
