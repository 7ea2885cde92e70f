//! Line tidying shared by the HTML reducer and the quote stripper.

/// Joins `lines` with `\n`, trailing white space removed from each, at most
/// one blank line in a row, and no blank lines at either end.
pub(super) fn tidy_lines<'a>(lines: impl IntoIterator<Item = &'a str>, capacity: usize) -> String {
    let mut out = String::with_capacity(capacity);
    let mut blank_run = 0;
    for line in lines {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    let end = out.trim_end().len();
    out.truncate(end);
    let start = out.len() - out.trim_start_matches('\n').len();
    out.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::tidy_lines;

    #[test]
    fn collapses_blank_runs_and_trims_the_ends() {
        let text = "\n\n  \nfirst  \n\n\n\nsecond\t\n \n";
        assert_eq!(tidy_lines(text.split('\n'), 0), "first\n\nsecond");
        assert_eq!(tidy_lines(["", "  "], 0), "");
    }
}
