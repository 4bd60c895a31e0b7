-- What the flow reads: one row per session with product interactions, its SKUs in time order.
-- Incremental: a session with new events (page views included) is rebuilt from its built row's interactions
-- and its new ones; staging's new rows are events never seen before, so history is never re-read.
-- depends_on: {{ ref('stg_browsing_events') }}
{{ config(materialized='incremental', unique_key='session_key', incremental_strategy='delete+insert',
          on_schema_change='append_new_columns', pre_hook="{{ add_session_key_to_built_rows() }}") }}

{% set touched_built_rows %}
    (
        select built.*
        from {{ this }} as built
        inner join starts on built.session_key = starts.session_key
    )
{% endset %}

with

starts as (

    select * from {{ ref('int_session_starts') }}
    -- only sessions with product events have interactions: a third of them, so the join below probes fewer rows
    where n_product_events > 0
    {% if is_incremental() %}
      and {{ arrived_since_last_build('last_etl_timestamp') }}
    {% endif %}

),

interactions as (

    select api_key, session_id, product_sku, product_action, event_epoch_ms, action_rank
    from {{ ref('int_product_interactions') }}
    {% if is_incremental() %}
    where {{ arrived_since_last_build() }}
    union all
    -- the interactions already in the rows of the sessions rebuilt
    select
        built.api_key,
        built.session_id,
        built.product_sku,
        built.product_action,
        built.event_epoch_ms,
        {{ action_rank('built.product_action') }} as action_rank
    from (
        {{ unnest_arrays(touched_built_rows, ['api_key', 'session_id'], [
            ('interactions', 'product_sku', 'varchar'),
            ('actions', 'product_action', 'varchar'),
            ('timestamps', 'event_epoch_ms', 'bigint'),
        ]) }}
    ) as built
    {% endif %}

),

sequences as (

    select
        api_key,
        session_id,
        -- sorted by time, then by the funnel's order for events of the same millisecond
        {{ sorted_records([
            ('event_epoch_ms', 'event_epoch_ms'),
            ('action_rank', 'action_rank'),
            ('product_sku', 'product_sku'),
            ('product_action', 'product_action'),
        ]) }} as interactions_in_order,
        count(*) as n_interactions
    from interactions
    group by api_key, session_id

),

ordered as (

    select
        api_key,
        session_id,
        {{ record_field('interactions_in_order', 'product_sku', 'varchar') }} as interactions,
        {{ record_field('interactions_in_order', 'product_action', 'varchar') }} as actions,
        {{ record_field('interactions_in_order', 'event_epoch_ms', 'bigint') }} as timestamps,
        n_interactions
    from sequences

),

final as (

    select
        ordered.session_id,
        ordered.api_key,
        starts.session_key,
        starts.session_date,
        starts.session_start_at,
        starts.session_end_at,
        ordered.interactions,
        ordered.actions,
        ordered.timestamps,
        ordered.n_interactions,
        -- from the list, not count(distinct ...): a second hash table per session costs more than the list
        {{ array_size(distinct_array('ordered.interactions')) }} as n_distinct_products,
        starts.n_events,
        starts.n_pageviews,
        starts.last_etl_timestamp,
        {{ built_this_run_column() }}
    from ordered
    inner join starts
        on ordered.api_key = starts.api_key
       and ordered.session_id = starts.session_id

)

select * from final
