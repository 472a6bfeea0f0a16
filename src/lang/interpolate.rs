//! `${NAME}` and `${NAME:-default}` in config values. The values come from a lookup the
//! caller passes: the process environment when loading, a map in tests.

/// Replaces `${NAME}` and `${NAME:-default}` with the values `get` gives.
/// Returns the name of the first variable that is unset and has no default.
pub fn interpolate_with(s: &str, get: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (get(name), default) {
            (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
            (_, Some(d)) => out.push_str(d),
            (None, None) => return Err(name.to_string()),
            (Some(v), None) => out.push_str(&v),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_uses_env_and_defaults() {
        let get = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(interpolate_with("p-${A}-q", get).unwrap(), "p-x-q");
        assert_eq!(interpolate_with("${B:-dflt}", get).unwrap(), "dflt");
        assert_eq!(interpolate_with("${B}", get).unwrap_err(), "B");
        assert_eq!(interpolate_with("{{ a }}", get).unwrap(), "{{ a }}");
    }
}
