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
                .all(|(field, wanted)| field.wildcard || field.text == wanted)
        })
        .map(|mut fields| fields.swap_remove(4).text)
}

/// One field of a line: its text unescaped, and whether it was a bare `*` (`\*` is a star).
#[derive(Debug)]
struct Field {
    text: String,
    wildcard: bool,
}

/// The five fields of a line, as libpq reads them (each ends at an unescaped `:`, the
/// password too); `None` for a line with fewer.
fn fields(line: &str) -> Option<Vec<Field>> {
    let mut fields = Vec::with_capacity(5);
    let mut chars = line.chars();
    while fields.len() < 5 {
        let (mut text, mut escaped, mut ended) = (String::new(), false, false);
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        text.push(next);
                        escaped = true;
                    }
                }
                ':' => {
                    ended = true;
                    break;
                }
                c => text.push(c),
            }
        }
        let wildcard = text == "*" && !escaped;
        fields.push(Field { text, wildcard });
        if !ended {
            break;
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
        // The password ends at the first unescaped colon, as libpq reads it.
        assert_eq!(
            lookup("a\\:b:5432:tern:tern:p\\\\w\\:x:ignored", &target).as_deref(),
            Some("p\\w:x")
        );
        // An escaped star is a star, not a wildcard.
        assert_eq!(lookup("\\*:5432:tern:tern:no", &TARGET), None);
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_read_without_panicking(text in ".{0,200}") {
            let _ = lookup(&text, &TARGET);
        }
    }
}
