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

    proptest::proptest! {
        /// Whatever a cgroup file holds (random bytes, read lossily as the agent reads
        /// them): no panic, and a uid found is one.
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(uid) = pod_uid(&text) {
                proptest::prop_assert!(is_uid(&uid));
            }
        }

        /// Random lines around a real one: the real uid is still found.
        #[test]
        fn noise_around_a_pod_line_keeps_its_uid(noise in "[ -~\n]{0,200}") {
            let line = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b4e5d3a_2f3c_4d5e_8f9a_0b1c2d3e4f5a.slice/cri-containerd-abc.scope";
            let text = format!("{}\n{line}\n{noise}", noise.replace("pod", "p-d"));
            let found = pod_uid(&text);
            proptest::prop_assert_eq!(found.as_deref(), Some("1b4e5d3a-2f3c-4d5e-8f9a-0b1c2d3e4f5a"));
        }
    }
}
