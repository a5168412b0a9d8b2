//! libpq's password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`): lines of
//! `hostname:port:database:username:password`, `*` matching anything in the first four
//! fields, `\` escaping `:` and `\`, `#` starting a comment.

/// What a connection is to: the fields a line must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub database: &'a str,
    pub user: &'a str,
}

/// The password of the first line of `text` that matches `target`.
pub fn lookup(text: &str, target: &Target<'_>) -> Option<String> {
    let port = target.port.to_string();
    let wanted = [target.host, port.as_str(), target.database, target.user];
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(fields)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, wanted)| field == "*" || field == wanted)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// The five fields of a line, unescaped; `None` for a line with fewer.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut()?.push(next);
                }
            }
            // The password is the rest of the line, colons and all.
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Target<'static> = Target {
        host: "db.example",
        port: 5432,
        database: "tern",
        user: "tern",
    };

    #[test]
    fn the_first_matching_line_gives_the_password() {
        let text = "# comment\nother:5432:tern:tern:no\n*:5432:tern:tern:yes\n*:*:*:*:later\n";
        assert_eq!(lookup(text, &TARGET).as_deref(), Some("yes"));
    }

    #[test]
    fn wildcards_match_any_field_and_nothing_matches_none() {
        assert_eq!(lookup("*:*:*:*:any", &TARGET).as_deref(), Some("any"));
        assert_eq!(lookup("db.example:5433:tern:tern:x", &TARGET), None);
        assert_eq!(lookup("db.example:5432:tern", &TARGET), None);
        assert_eq!(lookup("", &TARGET), None);
    }

    #[test]
    fn escapes_keep_colons_and_backslashes_in_fields() {
        let target = Target {
            host: "a:b",
            ..TARGET
        };
        assert_eq!(
            lookup("a\\:b:5432:tern:tern:p\\\\w:x", &target).as_deref(),
            Some("p\\w:x")
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_without_panicking(text in ".{0,200}") {
            let _ = lookup(&text, &TARGET);
        }
    }
}
