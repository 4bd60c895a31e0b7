-- What the flow reads: one row per session with product interactions, its SKUs in time order.
-- depends_on: {{ ref('stg_browsing_events') }}
{{ config(materialized='incremental', unique_key=['api_key', 'session_id'], incremental_strategy='delete+insert') }}

with

{% if is_incremental() %}
-- sessions that received events since the last build are rebuilt whole; the others are left alone
touched as (

    {{ keys_with_new_events(['api_key', 'session_id']) }}

),
{% endif %}

interactions as (

    select interactions.*
    from {{ ref('int_product_interactions') }} as interactions
    {% if is_incremental() %}
    inner join touched
        on interactions.api_key = touched.api_key and interactions.session_id = touched.session_id
    {% endif %}

),

starts as (

    select starts.*
    from {{ ref('int_session_starts') }} as starts
    {% if is_incremental() %}
    inner join touched on starts.api_key = touched.api_key and starts.session_id = touched.session_id
    {% endif %}

),

sequences as (

    select
        api_key,
        session_id,
        {{ ordered_array_agg('product_sku', 'event_epoch_ms, action_rank') }} as interactions,
        {{ ordered_array_agg('product_action', 'event_epoch_ms, action_rank') }} as actions,
        {{ ordered_array_agg('event_epoch_ms', 'event_epoch_ms, action_rank') }} as timestamps,
        count(*) as n_interactions,
        count(distinct product_sku) as n_distinct_products
    from interactions
    group by api_key, session_id

),

final as (

    select
        sequences.session_id,
        sequences.api_key,
        starts.session_date,
        starts.session_start_at,
        starts.session_end_at,
        sequences.interactions,
        sequences.actions,
        sequences.timestamps,
        sequences.n_interactions,
        sequences.n_distinct_products,
        starts.n_events,
        starts.n_pageviews,
        starts.last_etl_timestamp
    from sequences
    inner join starts
        on sequences.api_key = starts.api_key
       and sequences.session_id = starts.session_id

)

select * from final
