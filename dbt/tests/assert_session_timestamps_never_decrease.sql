-- A session's interactions are in time order: no event comes before the one listed ahead of it.
with interactions as (

    select * from {{ ref('int_product_interactions') }}

),

ordered as (

    select
        api_key,
        session_id,
        event_epoch_ms,
        lag(event_epoch_ms) over (
            partition by api_key, session_id order by event_epoch_ms, action_rank
        ) as previous_epoch_ms
    from interactions

)

select * from ordered where event_epoch_ms < previous_epoch_ms
