//! Reading and writing the tables' columns: typed access to a scanned batch's columns
//! whatever physical type the reader produced, single values of query results, and
//! timestamp literals that match the tables' timestamp columns.

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, TimeUnit};
use deltalake::datafusion::scalar::ScalarValue;

use super::Table;
use crate::clock::{from_micros, to_micros};
use crate::error::{Error, Result};

/// The Arrow type of the tables' timestamp columns: microseconds, UTC.
pub(crate) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A timestamp literal matching the tables' timestamp columns.
pub(crate) fn timestamp(t: DateTime<Utc>) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(to_micros(t)), Some("UTC".into()))
}

/// An array cast to the type `A` is: the cast made it so.
fn downcast<A: Array + Clone + 'static>(a: &ArrayRef) -> A {
    a.as_any()
        .downcast_ref::<A>()
        .expect("cast to the array's own type")
        .clone()
}

/// Any string-like column (Utf8, views, dictionary) as a plain string array.
pub(crate) fn strings(a: &ArrayRef) -> Result<StringArray> {
    Ok(downcast(&cast(a, &DataType::Utf8)?))
}

/// Row `i` of a string column, `None` when null.
pub(crate) fn string_at(a: &ArrayRef, i: usize) -> Option<String> {
    let a = strings(a).ok()?;
    a.is_valid(i).then(|| a.value(i).to_owned())
}

/// Row `i` of an integer column, `None` when null.
pub(crate) fn int_at(a: &ArrayRef, i: usize) -> Option<i64> {
    let a = cast(a, &DataType::Int64).ok()?;
    let a = a.as_any().downcast_ref::<Int64Array>()?;
    a.is_valid(i).then(|| a.value(i))
}

/// Row `i` of a numeric column as a float, `None` when null.
pub(crate) fn float_at(a: &ArrayRef, i: usize) -> Option<f64> {
    let a = cast(a, &DataType::Float64).ok()?;
    let a = a.as_any().downcast_ref::<Float64Array>()?;
    a.is_valid(i).then(|| a.value(i))
}

/// Row `i` of a timestamp column, `None` when null.
pub(crate) fn time_at(a: &ArrayRef, i: usize) -> Option<DateTime<Utc>> {
    let a = cast(a, &timestamp_type()).ok()?;
    let a = a.as_any().downcast_ref::<TimestampMicrosecondArray>()?;
    a.is_valid(i).then(|| from_micros(a.value(i)))
}

/// Typed access to a batch's columns, whatever physical type the reader produced
/// (string views, other timestamp zones) and with a clear error for a null key.
pub(crate) struct Columns<'a> {
    /// The table the batch was read from, named in errors.
    pub table: Table,
    /// The batch.
    pub batch: &'a RecordBatch,
}

impl Columns<'_> {
    /// The column `name` cast to `ty`, as the array type `A` that `ty` is.
    fn column<A: Array + Clone + 'static>(&self, name: &str, ty: DataType) -> Result<A> {
        let column = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| Error::Corrupt {
                table: self.table.name(),
                detail: format!("column '{name}' is missing from a scan"),
            })?;
        Ok(downcast::<A>(&cast(column, &ty)?))
    }

    pub fn opt_str(&self, name: &str) -> Result<Vec<Option<String>>> {
        let a: StringArray = self.column(name, DataType::Utf8)?;
        Ok(a.iter().map(|v| v.map(str::to_owned)).collect())
    }

    pub fn str(&self, name: &str) -> Result<Vec<String>> {
        self.required(name, self.opt_str(name)?)
    }

    pub fn int(&self, name: &str) -> Result<Vec<i32>> {
        let a: Int32Array = self.column(name, DataType::Int32)?;
        self.required(name, a.iter().collect())
    }

    pub fn long(&self, name: &str) -> Result<Vec<i64>> {
        let a: Int64Array = self.column(name, DataType::Int64)?;
        self.required(name, a.iter().collect())
    }

    pub fn opt_time(&self, name: &str) -> Result<Vec<Option<DateTime<Utc>>>> {
        let a: TimestampMicrosecondArray = self.column(name, timestamp_type())?;
        Ok(a.iter().map(|v| v.map(from_micros)).collect())
    }

    pub fn time(&self, name: &str) -> Result<Vec<DateTime<Utc>>> {
        self.required(name, self.opt_time(name)?)
    }

    /// An added column ([`Table::added_columns`]): null in every row of a file written
    /// before it was.
    fn added<A: Array + Clone + 'static, T>(
        &self,
        name: &str,
        ty: DataType,
        values: impl Fn(&A) -> Vec<Option<T>>,
    ) -> Result<Vec<Option<T>>> {
        if self.batch.column_by_name(name).is_none() {
            return Ok(std::iter::repeat_with(|| None)
                .take(self.batch.num_rows())
                .collect());
        }
        Ok(values(&self.column::<A>(name, ty)?))
    }

    /// An added integer column (see [`Columns::added`]).
    pub fn added_int(&self, name: &str) -> Result<Vec<Option<i32>>> {
        self.added(name, DataType::Int32, |a: &Int32Array| a.iter().collect())
    }

    /// An added string column (see [`Columns::added`]).
    pub fn added_str(&self, name: &str) -> Result<Vec<Option<String>>> {
        self.added(name, DataType::Utf8, |a: &StringArray| {
            a.iter().map(|v| v.map(str::to_owned)).collect()
        })
    }

    /// The values of a column that may hold no null.
    fn required<T>(&self, name: &str, values: Vec<Option<T>>) -> Result<Vec<T>> {
        values
            .into_iter()
            .map(|v| {
                v.ok_or_else(|| Error::Corrupt {
                    table: self.table.name(),
                    detail: format!("null in column '{name}'"),
                })
            })
            .collect()
    }
}
