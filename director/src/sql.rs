//! The storage seam: one connection type over SQLite (rusqlite) and PostgreSQL (`postgres`,
//! the blocking front of tokio-postgres), so every repository function of [`crate::service`]
//! is written once.
//!
//! Statements are written in the dialect both engines share, with `?N` parameters (turned
//! into PostgreSQL's `$N` once per statement). Values cross the seam as four kinds
//! ([`Param`], [`Value`]): integers, text, bytes and NULL; the PostgreSQL schema stores every
//! integer and flag as `BIGINT`, as SQLite does, so a statement means the same on both.
//! What differs (schema, migrations, the writer's transactions) stays in [`crate::db`] and
//! the migration files of each engine.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{IsNull, ToSql as PgToSql, Type, to_sql_checked};

use crate::db::DbError;

/// Which engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite, embedded (the default).
    Sqlite,
    /// PostgreSQL, over the network.
    Postgres,
}

/// A connection to either engine. Every method takes `&self`: a PostgreSQL client is used
/// by one thread at a time (the connection is owned by one writer or one pool slot).
pub struct Conn {
    backend: Backend,
    /// Savepoints open now: their names are unique per depth.
    depth: std::cell::Cell<u32>,
}

enum Backend {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

struct Pg {
    /// Always `Some` until dropped ([`Pg`]'s `Drop`).
    client: RefCell<Option<postgres::Client>>,
    /// How to connect again after the connection was lost ([`Conn::reconnect_if_lost`]).
    target: crate::pg::PgTarget,
    /// Statements prepared on this connection, by their `?N` text.
    statements: RefCell<HashMap<String, postgres::Statement>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("engine", &self.engine())
            .finish()
    }
}

/// A statement parameter: what a value is as the database stores it.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    /// NULL.
    Null,
    /// An integer (flags are 0 or 1).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

/// A value that can be bound to a statement.
pub trait ToParam {
    /// The value as a parameter.
    fn param(&self) -> Param<'_>;
}

impl ToParam for Param<'_> {
    fn param(&self) -> Param<'_> {
        *self
    }
}
impl ToParam for i64 {
    fn param(&self) -> Param<'_> {
        Param::Int(*self)
    }
}
impl ToParam for i32 {
    fn param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}
impl ToParam for u32 {
    fn param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}
impl ToParam for bool {
    fn param(&self) -> Param<'_> {
        Param::Int(i64::from(*self))
    }
}
impl ToParam for str {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for String {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for std::borrow::Cow<'_, str> {
    fn param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl ToParam for [u8] {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for Vec<u8> {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl ToParam for bytes::Bytes {
    fn param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl<T: ToParam + ?Sized> ToParam for &T {
    fn param(&self) -> Param<'_> {
        (**self).param()
    }
}
impl<T: ToParam> ToParam for Option<T> {
    fn param(&self) -> Param<'_> {
        match self {
            Some(v) => v.param(),
            None => Param::Null,
        }
    }
}

/// Statement parameters: `params![a, b, c]`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[&dyn $crate::sql::ToParam] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::sql::ToParam),+] as &[&dyn $crate::sql::ToParam] };
}
pub use params;

/// A column's value as read.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// NULL.
    Null,
    /// An integer (PostgreSQL booleans read as 0 or 1).
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "bytes",
        }
    }
}

/// A type a column can be read as.
pub trait Column: Sized {
    /// Reads the value, or says why it cannot be this type.
    fn column(value: Value<'_>) -> Result<Self, String>;
}

fn wrong<T>(value: Value<'_>, wanted: &str) -> Result<T, String> {
    Err(format!("expected {wanted}, found {}", value.kind()))
}

impl Column for i64 {
    fn column(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Int(v) => Ok(v),
            other => wrong(other, "an integer"),
        }
    }
}
impl Column for u64 {
    fn column(value: Value<'_>) -> Result<Self, String> {
        let v = i64::column(value)?;
        u64::try_from(v).map_err(|_| format!("expected a count, found {v}"))
    }
}
impl Column for u32 {
    fn column(value: Value<'_>) -> Result<Self, String> {
        let v = i64::column(value)?;
        u32::try_from(v).map_err(|_| format!("expected a small count, found {v}"))
    }
}
impl Column for usize {
    fn column(value: Value<'_>) -> Result<Self, String> {
        let v = i64::column(value)?;
        usize::try_from(v).map_err(|_| format!("expected a count, found {v}"))
    }
}
impl Column for bool {
    fn column(value: Value<'_>) -> Result<Self, String> {
        Ok(i64::column(value)? != 0)
    }
}
impl Column for String {
    fn column(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.to_owned()),
            other => wrong(other, "text"),
        }
    }
}
impl Column for Vec<u8> {
    fn column(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.to_vec()),
            // SQLite keeps what was bound: bytes written as text read back as text.
            Value::Text(s) => Ok(s.as_bytes().to_vec()),
            other => wrong(other, "bytes"),
        }
    }
}
impl<T: Column> Column for Option<T> {
    fn column(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            v => T::column(v).map(Some),
        }
    }
}

/// Any value, owned: what a column held, to be written elsewhere (a move between engines)
/// or compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedValue {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

impl Column for OwnedValue {
    fn column(value: Value<'_>) -> Result<Self, String> {
        Ok(match value {
            Value::Null => OwnedValue::Null,
            Value::Int(v) => OwnedValue::Int(v),
            Value::Text(t) => OwnedValue::Text(t.to_owned()),
            Value::Blob(b) => OwnedValue::Blob(b.to_vec()),
        })
    }
}

impl ToParam for OwnedValue {
    fn param(&self) -> Param<'_> {
        match self {
            OwnedValue::Null => Param::Null,
            OwnedValue::Int(v) => Param::Int(*v),
            OwnedValue::Text(t) => Param::Text(t),
            OwnedValue::Blob(b) => Param::Blob(b),
        }
    }
}

/// One row of a result.
pub struct Row<'a>(RowInner<'a>);

enum RowInner<'a> {
    Sqlite(&'a rusqlite::Row<'a>),
    Postgres(&'a postgres::Row),
}

impl std::fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Row")
    }
}

impl Row<'_> {
    /// How many columns it has.
    pub fn len(&self) -> usize {
        match &self.0 {
            RowInner::Sqlite(row) => row.as_ref().column_count(),
            RowInner::Postgres(row) => row.len(),
        }
    }

    /// Whether it has no columns.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Column `i` as a `T`.
    pub fn get<T: Column>(&self, i: usize) -> Result<T, DbError> {
        let column = |message: String| DbError::Column { index: i, message };
        match &self.0 {
            RowInner::Sqlite(row) => {
                let value = match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                    rusqlite::types::ValueRef::Real(v) => {
                        return Err(column(format!("unexpected real {v}")));
                    }
                    rusqlite::types::ValueRef::Text(t) => Value::Text(
                        std::str::from_utf8(t).map_err(|e| column(format!("text: {e}")))?,
                    ),
                    rusqlite::types::ValueRef::Blob(b) => Value::Blob(b),
                };
                T::column(value).map_err(column)
            }
            RowInner::Postgres(row) => {
                let Some(c) = row.columns().get(i) else {
                    return Err(column("no such column".into()));
                };
                let ty = c.type_();
                let pg = |e: postgres::Error| DbError::Postgres(e);
                let value = if *ty == Type::INT8 {
                    row.try_get::<_, Option<i64>>(i)
                        .map_err(pg)?
                        .map(Value::Int)
                } else if *ty == Type::INT4 {
                    row.try_get::<_, Option<i32>>(i)
                        .map_err(pg)?
                        .map(|v| Value::Int(v.into()))
                } else if *ty == Type::INT2 {
                    row.try_get::<_, Option<i16>>(i)
                        .map_err(pg)?
                        .map(|v| Value::Int(v.into()))
                } else if *ty == Type::BOOL {
                    row.try_get::<_, Option<bool>>(i)
                        .map_err(pg)?
                        .map(|v| Value::Int(v.into()))
                } else if *ty == Type::BYTEA {
                    row.try_get::<_, Option<&[u8]>>(i)
                        .map_err(pg)?
                        .map(Value::Blob)
                } else {
                    row.try_get::<_, Option<&str>>(i)
                        .map_err(pg)?
                        .map(Value::Text)
                };
                T::column(value.unwrap_or(Value::Null)).map_err(column)
            }
        }
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Int(v) => ValueRef::Integer(v),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl PgToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(v) => {
                if *ty == Type::INT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(v)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(v)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (v != 0).to_sql(ty, out)
                } else {
                    Err(format!("an integer given for a {ty} parameter").into())
                }
            }
            // Text bound to a bytes column (a value SQLite kept as text, being moved).
            Param::Text(s) if *ty == Type::BYTEA => s.as_bytes().to_sql(ty, out),
            Param::Text(s)
                if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) =>
            {
                s.to_sql(ty, out)
            }
            Param::Blob(b) if *ty == Type::BYTEA => b.to_sql(ty, out),
            Param::Text(_) => Err(format!("text given for a {ty} parameter").into()),
            Param::Blob(_) => Err(format!("bytes given for a {ty} parameter").into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked value by value in `to_sql`.
        true
    }

    to_sql_checked!();
}

/// `sql` with its `?N` parameters written as PostgreSQL's `$N` (outside quoted text).
fn dollar_params(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl Conn {
    /// A connection over an open SQLite connection.
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Conn {
            backend: Backend::Sqlite(conn),
            depth: std::cell::Cell::new(0),
        }
    }

    /// A connection to the PostgreSQL database `target` names.
    pub fn postgres(target: crate::pg::PgTarget) -> Result<Self, DbError> {
        let client = target.connect()?;
        Ok(Conn {
            backend: Backend::Postgres(Box::new(Pg {
                client: RefCell::new(Some(client)),
                target,
                statements: RefCell::default(),
            })),
            depth: std::cell::Cell::new(0),
        })
    }

    /// On PostgreSQL, connects again if the connection was lost (the server restarted, a
    /// failover, a network cut): called only before a transaction begins, so a statement
    /// of a transaction never runs on a new connection outside it (a COMMIT there would
    /// "succeed" with nothing committed).
    pub fn reconnect_if_lost(&self) -> Result<(), DbError> {
        let Backend::Postgres(pg) = &self.backend else {
            return Ok(());
        };
        let mut slot = pg.client.borrow_mut();
        if slot.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        pg.statements.borrow_mut().clear();
        *slot = None;
        *slot = Some(pg.target.connect()?);
        tracing::info!("connected to PostgreSQL again");
        Ok(())
    }

    /// The engine behind this connection.
    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Sqlite(_) => Engine::Sqlite,
            Backend::Postgres(_) => Engine::Postgres,
        }
    }

    /// The SQLite connection, for what only SQLite has (its file, its statement figures).
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.backend {
            Backend::Sqlite(c) => Some(c),
            Backend::Postgres(_) => None,
        }
    }

    /// The SQLite connection, to set up what only SQLite has (its commit hook).
    pub fn as_sqlite_mut(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.backend {
            Backend::Sqlite(c) => Some(c),
            Backend::Postgres(_) => None,
        }
    }

    /// Runs statements without parameters (schema, transaction control).
    pub fn batch(&self, sql: &str) -> Result<(), DbError> {
        match &self.backend {
            Backend::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Backend::Postgres(pg) => Ok(pg.client().batch_execute(sql)?),
        }
    }

    /// Runs one statement without parameters or rows (transaction control), kept prepared
    /// where the engine allows it.
    pub fn run(&self, sql: &str) -> Result<(), DbError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                c.prepare_cached(sql)?.execute([])?;
                Ok(())
            }
            Backend::Postgres(pg) => Ok(pg.client().batch_execute(sql)?),
        }
    }

    /// Runs one statement kept prepared on this connection; returns the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn ToParam]) -> Result<usize, DbError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter().map(|p| p.param())))?)
            }
            Backend::Postgres(pg) => {
                let n = pg.run(sql, params, |client, stmt, refs| client.execute(stmt, refs))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Every row of one statement, each read by `f`.
    pub fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn ToParam],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(params.iter().map(|p| p.param())))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row(RowInner::Sqlite(row)))?);
                }
                Ok(out)
            }
            Backend::Postgres(pg) => {
                let rows = pg.run(sql, params, |client, stmt, refs| client.query(stmt, refs))?;
                rows.iter()
                    .map(|r| f(&Row(RowInner::Postgres(r))))
                    .collect()
            }
        }
    }

    /// The first row of one statement read by `f`, if there is one.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn ToParam],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        match &self.backend {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows =
                    stmt.query(rusqlite::params_from_iter(params.iter().map(|p| p.param())))?;
                match rows.next()? {
                    Some(row) => f(&Row(RowInner::Sqlite(row))).map(Some),
                    None => Ok(None),
                }
            }
            Backend::Postgres(pg) => {
                let row = pg.run(sql, params, |client, stmt, refs| {
                    client.query_opt(stmt, refs)
                })?;
                row.as_ref()
                    .map(|r| f(&Row(RowInner::Postgres(r))))
                    .transpose()
            }
        }
    }

    /// The first row of one statement read by `f`; no row is an error.
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn ToParam],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_opt(sql, params, f)?.ok_or(DbError::NoRow)
    }

    /// One value: the first column of the first row.
    pub fn value<T: Column>(&self, sql: &str, params: &[&dyn ToParam]) -> Result<T, DbError> {
        self.query_row(sql, params, |r| r.get(0))
    }

    /// Locks the row of `table` whose `column` is `value` until the transaction ends, so that
    /// what this transaction reads of it next is current and no other writer changes it in
    /// between: on PostgreSQL, where replicas write at once (`SELECT … FOR UPDATE`). SQLite
    /// has one writer at a time, whose transaction holds the database lock: nothing to do.
    /// `table` and `column` are literals of the caller.
    pub fn lock_row(&self, table: &str, column: &str, value: &str) -> Result<(), DbError> {
        match self.engine() {
            Engine::Sqlite => Ok(()),
            Engine::Postgres => {
                self.query(
                    &format!("SELECT 1 FROM {table} WHERE {column} = ?1 FOR UPDATE"),
                    params![value],
                    |_| Ok(()),
                )?;
                Ok(())
            }
        }
    }

    /// Opens a savepoint: its writes are kept by [`Savepoint::commit`] and undone if it is
    /// dropped. Outside a transaction it begins one (SQLite), which its commit ends.
    pub fn savepoint(&self) -> Result<Savepoint<'_>, DbError> {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        let name = format!("sp{depth}");
        if let Err(e) = self.batch(&format!("SAVEPOINT {name}")) {
            self.end_savepoint();
            return Err(e);
        }
        Ok(Savepoint {
            conn: self,
            name,
            done: false,
        })
    }

    fn end_savepoint(&self) {
        self.depth.set(self.depth.get().saturating_sub(1));
    }

    /// Whether no transaction is open (SQLite). On PostgreSQL every call of the service runs
    /// inside the writer's transaction or the caller's own, so this says whether the caller
    /// opened none: always false there.
    pub fn is_autocommit(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(c) => c.is_autocommit(),
            Backend::Postgres(_) => false,
        }
    }
}

/// The parameters of one PostgreSQL statement, as the client takes them.
type PgParams<'a> = [&'a (dyn PgToSql + Sync)];

impl Pg {
    /// Runs `call` on statement `sql` (prepared once per connection) with `params`.
    fn run<T>(
        &self,
        sql: &str,
        params: &[&dyn ToParam],
        call: impl FnOnce(
            &mut postgres::Client,
            &postgres::Statement,
            &PgParams<'_>,
        ) -> Result<T, postgres::Error>,
    ) -> Result<T, DbError> {
        let stmt = self.statement(sql)?;
        let values: Vec<Param<'_>> = params.iter().map(|p| p.param()).collect();
        let refs: Vec<&(dyn PgToSql + Sync)> =
            values.iter().map(|v| v as &(dyn PgToSql + Sync)).collect();
        Ok(call(&mut self.client(), &stmt, &refs)?)
    }

    fn client(&self) -> std::cell::RefMut<'_, postgres::Client> {
        std::cell::RefMut::map(self.client.borrow_mut(), |c| {
            c.as_mut()
                .expect("a PostgreSQL connection is used only until dropped")
        })
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client().prepare(&dollar_params(sql))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }
}

impl Drop for Pg {
    /// The client closes its connection by blocking on its own runtime, which it may not do
    /// on a thread that drives async tasks: there it is closed on a thread of its own.
    fn drop(&mut self) {
        if let Some(client) = self.client.get_mut().take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let _ = std::thread::Builder::new()
                .name("director-pg-close".into())
                .spawn(move || drop(client));
        }
    }
}

/// An open savepoint ([`Conn::savepoint`]): dereferences to its connection.
#[derive(Debug)]
pub struct Savepoint<'c> {
    conn: &'c Conn,
    name: String,
    done: bool,
}

impl Savepoint<'_> {
    /// Keeps the savepoint's writes (in the enclosing transaction, if any).
    pub fn commit(mut self) -> Result<(), DbError> {
        self.done = true;
        let released = self.conn.batch(&format!("RELEASE {}", self.name));
        self.conn.end_savepoint();
        released
    }
}

impl std::ops::Deref for Savepoint<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.batch(&format!(
                "ROLLBACK TO {name}; RELEASE {name}",
                name = self.name
            ));
            self.conn.end_savepoint();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_dollars_outside_quoted_text() {
        assert_eq!(
            dollar_params("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?12, ?3)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($12, $3)"
        );
    }
}
