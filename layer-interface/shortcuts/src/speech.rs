//! Text for the ear: Markdown taken out (a shortcut speaks the answer, and "asterisk
//! asterisk" helps nobody), and answers cut at a sentence end.

/// Plain sentences from a model's Markdown: headings, emphasis, code marks, links (their
/// text kept), list and quote markers, tables and rules go; each list item or heading ends
/// as a sentence so that speech pauses; blank lines and runs of spaces fold.
pub fn strip_markdown(text: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut in_fence = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with("```") || line.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            if !line.is_empty() {
                lines.push(line.to_owned());
            }
            continue;
        }
        if line.is_empty() || is_rule(line) || is_table_separator(line) {
            lines.push(String::new());
            continue;
        }
        let (body, mut block) = block_marker(line);
        let mut body = inline(body);
        if line.starts_with('|') {
            block = true;
            body = body
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
        }
        let body = body.trim().to_owned();
        if body.is_empty() {
            continue;
        }
        // A heading or an item reads as a sentence of its own.
        if block && !ends_sentence(&body) {
            lines.push(format!("{body}."));
        } else {
            lines.push(body);
        }
    }
    // Lines of one paragraph join with a space; paragraphs too (speech has no layout).
    let mut out = String::new();
    for l in lines.iter().filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(l);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_rule(line: &str) -> bool {
    let c: Vec<char> = line.chars().filter(|c| !c.is_whitespace()).collect();
    c.len() >= 3
        && (c.iter().all(|&x| x == '-')
            || c.iter().all(|&x| x == '*')
            || c.iter().all(|&x| x == '_'))
}

fn is_table_separator(line: &str) -> bool {
    line.contains('-')
        && line.contains('|')
        && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

/// The line without its heading, list or quote marker, and whether it had one.
fn block_marker(line: &str) -> (&str, bool) {
    let mut l = line;
    let mut marked = false;
    while let Some(rest) = l.strip_prefix('>') {
        l = rest.trim_start();
    }
    let hashes = l.chars().take_while(|&c| c == '#').count();
    if (1..=6).contains(&hashes) && l[hashes..].starts_with(' ') {
        return (l[hashes..].trim(), true);
    }
    for bullet in ["- ", "* ", "+ ", "• "] {
        if let Some(rest) = l.strip_prefix(bullet) {
            l = rest;
            marked = true;
            break;
        }
    }
    if !marked {
        let digits = l.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 && digits < 4 {
            let rest = &l[digits..];
            if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
                l = r;
                marked = true;
            }
        }
    }
    // A task list's box.
    for b in ["[ ] ", "[x] ", "[X] "] {
        if let Some(rest) = l.strip_prefix(b) {
            l = rest;
        }
    }
    (l, marked)
}

/// Emphasis, code marks, links, images and HTML tags out of one line.
fn inline(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // [text](url) and ![alt](url): the text.
        if c == '[' || (c == '!' && chars.get(i + 1) == Some(&'[')) {
            let open = if c == '!' { i + 1 } else { i };
            if let Some(close) = find(&chars, open + 1, ']')
                && chars.get(close + 1) == Some(&'(')
                && let Some(end) = find(&chars, close + 2, ')')
            {
                out.extend(&chars[open + 1..close]);
                i = end + 1;
                continue;
            }
        }
        // <tag> and </tag>.
        if c == '<'
            && let Some(end) = find(&chars, i + 1, '>')
            && chars
                .get(i + 1)
                .is_some_and(|n| n.is_ascii_alphabetic() || *n == '/')
            && chars[i + 1..end].iter().all(|c| *c != ' ' || end - i < 40)
        {
            out.push(' ');
            i = end + 1;
            continue;
        }
        if c == '`' {
            i += 1;
            continue;
        }
        // ** __ ~~ and single * or _ used as emphasis (not inside a word: snake_case stays).
        if matches!(c, '*' | '_' | '~') {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let run = chars[i..].iter().take_while(|&&x| x == c).count();
            let next = chars.get(i + run).copied();
            let inside_word =
                prev.is_some_and(char::is_alphanumeric) && next.is_some_and(char::is_alphanumeric);
            // A lone `*` between spaces is arithmetic, not emphasis.
            let lone = run == 1
                && prev.is_none_or(char::is_whitespace)
                && next.is_none_or(char::is_whitespace);
            if !lone && (c == '*' || c == '~' || !inside_word) {
                i += run;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn find(chars: &[char], from: usize, want: char) -> Option<usize> {
    chars
        .get(from..)?
        .iter()
        .position(|&c| c == want)
        .map(|p| p + from)
}

fn ends_sentence(s: &str) -> bool {
    s.trim_end()
        .ends_with(['.', '!', '?', '…', ':', ';', '。', '！', '？'])
}

/// Where the last full sentence of `text` ends (after its mark and any closing quote), if
/// any: a `.`, `!`, `?` or `…` followed by a space or the end.
pub fn last_sentence_end(text: &str) -> Option<usize> {
    let mut end = None;
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if matches!(c, '.' | '!' | '?' | '…' | '。' | '！' | '？') {
            let mut after = i + c.len_utf8();
            while let Some(&(j, q)) = it.peek() {
                if matches!(q, '"' | '\'' | '”' | '’' | ')' | '»') {
                    after = j + q.len_utf8();
                    it.next();
                } else {
                    break;
                }
            }
            match it.peek() {
                None => end = Some(after),
                Some(&(_, n)) if n.is_whitespace() => end = Some(after),
                // CJK marks need no space after them.
                Some(_) if matches!(c, '。' | '！' | '？') => end = Some(after),
                _ => {}
            }
        }
    }
    end
}

/// `text` cut at its last full sentence (`None` when it has none).
pub fn whole_sentences(text: &str) -> Option<&str> {
    last_sentence_end(text).map(|e| text[..e].trim_end())
}

/// `text` within `max` words: whole sentences when they fit, else the words with "…".
/// `None` when it is short enough already.
pub fn within_words(text: &str, max: usize) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() <= max || max == 0 {
        return None;
    }
    let head = words[..max].join(" ");
    Some(match whole_sentences(&head) {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => format!("{head}…"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_reads_as_sentences() {
        let md = "# Paris\n\nParis is the **capital** of *France*.\n\n## Sights\n- The `Eiffel` Tower\n- The [Louvre](https://louvre.fr)\n1. Notre-Dame\n\n> A quote here.\n\n---\n| city | people |\n|---|---|\n| Paris | 2.1 million |\n\n```python\nprint('hi')\n```\nSee ![a map](m.png) <br> and snake_case_names and __bold__ and ~~gone~~ text.";
        assert_eq!(
            strip_markdown(md),
            "Paris. Paris is the capital of France. Sights. The Eiffel Tower. The Louvre. Notre-Dame. A quote here. city, people. Paris, 2.1 million. print('hi') See a map and snake_case_names and bold and gone text."
        );
        assert_eq!(
            strip_markdown("plain text, no marks"),
            "plain text, no marks"
        );
        assert_eq!(strip_markdown("  \n\n "), "");
        assert_eq!(strip_markdown("2 * 3 = 6"), "2 * 3 = 6");
    }

    #[test]
    fn answers_are_cut_at_a_sentence_end() {
        assert_eq!(whole_sentences("One. Two! Three is cut"), Some("One. Two!"));
        assert_eq!(
            whole_sentences("It costs 3.5 euros. And"),
            Some("It costs 3.5 euros.")
        );
        assert_eq!(
            whole_sentences("He said \"yes.\" Then"),
            Some("He said \"yes.\"")
        );
        assert_eq!(whole_sentences("no end yet"), None);
        assert_eq!(whole_sentences("東京です。大阪"), Some("東京です。"));
        assert_eq!(whole_sentences("Done."), Some("Done."));
    }

    #[test]
    fn word_limits_keep_whole_sentences() {
        assert_eq!(within_words("One two. Three four five.", 10), None);
        assert_eq!(
            within_words("One two. Three four five.", 3).as_deref(),
            Some("One two.")
        );
        assert_eq!(
            within_words("One two three four", 2).as_deref(),
            Some("One two…")
        );
    }
}
