//! How an application records a change and its outbox event in one transaction.
//!
//! The chronicle's source of truth (`chronicle_events`, see `examples/migrations/`) and the
//! outbox row that tells projector about it commit together or not at all: there is never an
//! event without its change, nor a change whose projections never hear of it.
//!
//! ```sh
//! DATABASE_URL=postgres://... cargo run -p projector --example write_outbox -- book-42 user-7 "New title"
//! ```

use serde_json::json;
use sqlx::postgres::PgPool;
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("set DATABASE_URL"))?;
    let mut args = std::env::args().skip(1);
    let (Some(book), Some(actor), Some(title)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: write_outbox BOOK_ID ACTOR_ID NEW_TITLE");
        std::process::exit(2);
    };
    let pool = PgPool::connect(&url).await?;
    let request_id = Uuid::new_v4().to_string();

    let mut tx = pool.begin().await?;
    // 1. The business change: here, the chronicle's source-of-truth row.
    let (event_id, occurred_at): (Uuid, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "INSERT INTO chronicle_events (actor_user_id, entity_type, entity_id, event_type, after, occurred_at, request_id)
         VALUES ($1, 'book', $2, 'BookRenamed', $3, now(), $4)
         RETURNING id, occurred_at",
    )
    .bind(&actor)
    .bind(&book)
    .bind(json!({ "title": title }))
    .bind(&request_id)
    .fetch_one(&mut *tx)
    .await?;
    // 2. Its outbox row, in the same transaction: the four required columns (plus the aggregate
    //    type); projector fills in everything else.
    sqlx::query(
        "INSERT INTO outbox_events (projection, event_type, aggregate_type, aggregate_id, payload)
         VALUES ('chronicle', 'book.renamed', 'book', $1, $2)",
    )
    .bind(format!("book:{book}"))
    .bind(json!({
        "chronicleEventId": event_id, "actorUserId": actor, "entityType": "book", "entityId": book,
        "eventType": "BookRenamed", "after": { "title": title }, "occurredAt": occurred_at.to_rfc3339(),
        "requestId": request_id, "tenantId": "t-1", "correlationId": request_id, "source": "example",
    }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    println!("recorded chronicle event {event_id} and its outbox row");
    Ok(())
}
