//! `$(VAR)` expansion exactly as the kubelet does it (a port of
//! `k8s.io/kubernetes/third_party/forked/golang/expansion`).
//!
//! `$(NAME)` becomes the value of `NAME` when it is defined, and stays literally `$(NAME)`
//! when it is not; `$$` is an escaped `$`; a `$` before any other character is kept.

/// Expands `$(VAR)` references in `input` with `lookup`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let (read, is_var, advance) = read_variable_name(rest);
            if is_var {
                match lookup(read) {
                    Some(value) => out.push_str(&value),
                    None => {
                        out.push_str("$(");
                        out.push_str(read);
                        out.push(')');
                    }
                }
            } else {
                out.push_str(read);
            }
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

/// Reads what follows a `$`: returns (text, is a variable name, bytes consumed after the `$`).
fn read_variable_name(input: &str) -> (&str, bool, usize) {
    match input.as_bytes()[0] {
        b'$' => ("$", false, 1),
        b'(' => match input[1..].find(')') {
            Some(end) => (&input[1..1 + end], true, end + 2),
            // An incomplete reference: emit "$(" and continue after it.
            None => ("$(", false, 1),
        },
        // A "$" before any other character is kept; that character is emitted with the
        // rest of the text (consuming nothing here keeps multi-byte characters whole).
        _ => ("$", false, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::expand;
    use std::collections::HashMap;

    fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([("VAR_A", "A"), ("VAR_B", "B"), ("EMPTY", "")])
    }

    fn run(input: &str) -> String {
        let env = env();
        expand(input, |name| env.get(name).map(|v| v.to_string()))
    }

    #[test]
    fn expands_like_the_kubelet() {
        // Cases from k8s.io/kubernetes third_party/forked/golang/expansion/expand_test.go.
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_B)", "A-B"),
            ("$(EMPTY)", ""),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("foo$$bar", "foo$bar"),
            ("$VAR_A", "$VAR_A"),
            ("$(VAR_A", "$(VAR_A"),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$(", "$("),
            ("$()", "$()"),
            ("${VAR_A}", "${VAR_A}"),
            ("héllo $(VAR_A) wörld $é", "héllo A wörld $é"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(run(input), want, "input {input:?}");
        }
    }
}
