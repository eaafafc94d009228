//! The one table renderer of everything gpu-cloud prints for a terminal (`kubectl gpu`,
//! `gpu-cloud nodes`, `gpu-cloud report`): columns two spaces apart, as wide as their
//! widest cell, no trailing blanks, as kubectl prints its tables. Text is left-aligned;
//! the columns named as numbers are right-aligned so that digits line up.

/// Renders `rows` (the header first) with the columns in `right` right-aligned.
///
/// Widths count characters, not bytes, so names with accents line up too. A row shorter
/// than the header leaves its last cells empty.
pub fn render(rows: &[Vec<String>], right: &[usize]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, w) in widths.iter().enumerate() {
            let cell = row.get(c).map_or("", String::as_str);
            if c > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.contains(&c) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
        r.iter()
            .map(|r| r.iter().map(|c| c.to_string()).collect())
            .collect()
    }

    #[test]
    fn columns_line_up_left_or_right_without_trailing_blanks() {
        let t = rows(&[
            &["NAME", "GPUS", "NOTE"],
            &["é-long-name", "16", ""],
            &["b", "2", "x"],
        ]);
        assert_eq!(
            render(&t, &[1]),
            "NAME         GPUS  NOTE\né-long-name    16\nb               2  x\n"
        );
        assert_eq!(render(&[], &[]), "");
        assert_eq!(render(&rows(&[&["A", "B"], &["x"]]), &[]), "A  B\nx\n");
    }
}
