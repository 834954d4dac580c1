//! Which page of a listing to read. Every listing is newest first and every row carries a
//! cursor (its row number; an event's is its id): `before` reads on from the last row of a
//! page, `since` keeps rows from that time on. A page is at most [`Page::MAX_LIMIT`] rows,
//! so no request reads a whole table.

use crate::sql::{Conn, Param, Row, ToParam};
use uptane_core::time::UtcTime;

use super::now_text;
use crate::error::DirectorError;

/// A page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    limit: u32,
    before: Option<i64>,
    since: Option<UtcTime>,
}

impl Page {
    /// Rows a listing returns unless asked for fewer.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// The most rows one page holds.
    pub const MAX_LIMIT: u32 = 1000;

    /// A page of at most `limit` rows (refused outside 1..=[`Page::MAX_LIMIT`]) older than
    /// cursor `before` and at or after `since`.
    pub fn new(
        limit: u32,
        before: Option<i64>,
        since: Option<UtcTime>,
    ) -> Result<Self, DirectorError> {
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(DirectorError::BadRequest(format!(
                "limit must be between 1 and {}, not {limit}",
                Self::MAX_LIMIT
            )));
        }
        Ok(Page {
            limit,
            before,
            since,
        })
    }

    /// The newest `limit` rows (a limit outside the bounds is clamped).
    pub fn newest(limit: u32) -> Self {
        Page {
            limit: limit.clamp(1, Self::MAX_LIMIT),
            before: None,
            since: None,
        }
    }

    /// Its size.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The exclusive upper bound on the cursor (`rowid < ?`).
    pub fn before(&self) -> i64 {
        self.before.unwrap_or(i64::MAX)
    }

    /// The inclusive lower bound on the row's time, as stored (`time >= ?`; `NULL`: any).
    pub fn since(&self) -> Option<String> {
        self.since.map(now_text)
    }

    /// The statement reading this page: `select` (up to its `WHERE`) rows whose `cursor`
    /// column is below [`Page::before`] and whose `time` column is at or after `since`.
    pub fn query(&self, select: &str, cursor: &str, time: &str) -> PageQuery {
        let mut query = PageQuery {
            sql: format!("{select} {cursor} < ?1"),
            values: vec![Box::new(self.before())],
            cursor: cursor.to_string(),
            limit: self.limit,
        };
        if let Some(since) = self.since() {
            query = query.filter(&format!("{time} >= ?"), since);
        }
        query
    }
}

/// A page's statement, holding only the filters given: a filter written as `(? IS NULL OR
/// vin = ?)` would leave SQLite scanning the table, one written only when given lets it read
/// the page from the filter's index.
pub struct PageQuery {
    sql: String,
    values: Vec<Box<dyn ToParam>>,
    cursor: String,
    limit: u32,
}

impl std::fmt::Debug for PageQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageQuery")
            .field("sql", &self.sql())
            .finish()
    }
}

impl PageQuery {
    /// Adds `AND clause`, binding `value` to its one `?` (numbered here, as PostgreSQL needs).
    pub fn filter(mut self, clause: &str, value: impl ToParam + 'static) -> Self {
        self.values.push(Box::new(value));
        self.sql.push_str(" AND ");
        self.sql
            .push_str(&clause.replacen('?', &format!("?{}", self.values.len()), 1));
        self
    }

    /// Adds `AND clause`, which binds nothing.
    pub fn condition(mut self, clause: &str) -> Self {
        self.sql.push_str(" AND ");
        self.sql.push_str(clause);
        self
    }

    /// The whole statement, newest first.
    pub fn sql(&self) -> String {
        format!(
            "{} ORDER BY {} DESC LIMIT ?{}",
            self.sql,
            self.cursor,
            self.values.len() + 1
        )
    }

    /// The page's rows, each read by `row`.
    pub fn rows<T>(
        self,
        conn: &Conn,
        row: impl FnMut(&Row<'_>) -> Result<T, crate::db::DbError>,
    ) -> Result<Vec<T>, DirectorError> {
        let limit = Param::Int(self.limit.into());
        let values: Vec<&dyn ToParam> = self
            .values
            .iter()
            .map(|v| v.as_ref())
            .chain(std::iter::once(&limit as &dyn ToParam))
            .collect();
        Ok(conn.query(&self.sql(), &values, row)?)
    }
}

/// A `LIKE` pattern (with `ESCAPE '\\'`) matching text that starts with `text` (`prefix`)
/// or contains it: `%`, `_` and `\\` in `text` match only themselves.
pub fn like_pattern(text: &str, prefix: bool) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    if !prefix {
        pattern.push('%');
    }
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_one_to_a_thousand_rows() {
        assert!(Page::new(0, None, None).is_err());
        assert!(Page::new(1001, None, None).is_err());
        let page = Page::new(1000, Some(5), None).unwrap();
        assert_eq!((page.limit(), page.before(), page.since()), (1000, 5, None));
        assert_eq!(Page::newest(0).limit(), 1);
        assert_eq!(Page::newest(u32::MAX).limit(), 1000);
        assert_eq!(Page::newest(10).before(), i64::MAX);
    }

    #[test]
    fn like_patterns_match_wildcards_only_as_themselves() {
        assert_eq!(like_pattern("ab", true), "ab%");
        assert_eq!(like_pattern("a%b_c\\", false), "%a\\%b\\_c\\\\%");
    }
}
