-- What the flow reads: one row per session with product interactions, its SKUs in time order.
with interactions as (

    select * from {{ ref('int_product_interactions') }}

),

starts as (

    select * from {{ ref('int_session_starts') }}

),

sequences as (

    select
        api_key,
        session_id,
        {{ ordered_array_agg('product_sku', 'event_epoch_ms, action_rank') }} as interactions,
        {{ ordered_array_agg('product_action', 'event_epoch_ms, action_rank') }} as actions,
        {{ ordered_array_agg('event_epoch_ms', 'event_epoch_ms, action_rank') }} as timestamps,
        count(*) as n_interactions
    from interactions
    group by api_key, session_id

),

final as (

    select
        sequences.session_id,
        sequences.api_key,
        starts.session_date,
        starts.session_start_at,
        sequences.interactions,
        sequences.actions,
        sequences.timestamps,
        sequences.n_interactions,
        starts.n_events
    from sequences
    inner join starts
        on sequences.api_key = starts.api_key
       and sequences.session_id = starts.session_id

)

select * from final
