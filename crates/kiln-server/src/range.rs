//! One HTTP byte range (`Range: bytes=a-b`, `bytes=a-`, `bytes=-n`) resolved against a
//! size, as artifact downloads and published sites answer it; several ranges are served
//! as the whole body (allowed by RFC 9110).

/// What a `Range` header asks of a body of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// No usable range: the whole body (200).
    All,
    /// `start..=end` (206).
    Part { start: u64, end: u64 },
    /// A range past the end (416).
    Unsatisfiable,
}

pub(crate) fn wanted(header: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::All;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = |text: &str| text.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        (true, false) => match parsed(last) {
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if size == 0 => Wanted::Unsatisfiable,
            Some(suffix) => Wanted::Part {
                start: size.saturating_sub(suffix),
                end: size - 1,
            },
            None => Wanted::All,
        },
        (false, _) => {
            let Some(start) = parsed(first) else {
                return Wanted::All;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parsed(last)
            };
            match end {
                None => Wanted::All,
                Some(end) if end < start => Wanted::All,
                Some(_) if start >= size => Wanted::Unsatisfiable,
                Some(end) => Wanted::Part {
                    start,
                    end: end.min(size - 1),
                },
            }
        }
        (true, true) => Wanted::All,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_rfc_9110() {
        assert_eq!(wanted(None, 10), Wanted::All);
        assert_eq!(
            wanted(Some("bytes=0-4"), 10),
            Wanted::Part { start: 0, end: 4 }
        );
        assert_eq!(
            wanted(Some("bytes=5-"), 10),
            Wanted::Part { start: 5, end: 9 }
        );
        assert_eq!(
            wanted(Some("bytes=-3"), 10),
            Wanted::Part { start: 7, end: 9 }
        );
        assert_eq!(
            wanted(Some("bytes=-30"), 10),
            Wanted::Part { start: 0, end: 9 }
        );
        assert_eq!(
            wanted(Some("bytes=8-100"), 10),
            Wanted::Part { start: 8, end: 9 }
        );
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=4-2"), 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=0-1,3-4"), 10), Wanted::All);
        assert_eq!(wanted(Some("items=0-1"), 10), Wanted::All);
        assert_eq!(wanted(Some("bytes=x-1"), 10), Wanted::All);
    }
}
