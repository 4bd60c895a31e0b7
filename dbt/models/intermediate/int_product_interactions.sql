-- The product events a shopper chose to act on: the items of a session's sequence.
with events as (

    select * from {{ ref('stg_browsing_events') }}

),

final as (

    select
        api_key,
        session_id,
        product_sku,
        product_action,
        event_epoch_ms,
        etl_timestamp,
        dbt_build_id,
        {{ action_rank('product_action') }} as action_rank
    from events
    where event_type = 'event_product'
      and product_action in ('detail', 'add', 'purchase')
      and product_sku is not null

)

select * from final
