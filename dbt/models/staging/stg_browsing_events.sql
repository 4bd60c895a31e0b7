{{ config(materialized='incremental', on_schema_change='append_new_columns') }}

{%- if is_incremental() %}
    {%- set staged_until = newest_value(this, 'etl_timestamp') %}
    {%- set new_loads = loads_committed_after(staged_until) %}
{%- endif %}

{#- The events are read more than once below (to find repeated keys, then to pass events through), so their
    query is inlined rather than a CTE: DuckDB materialises a CTE that is read twice, every event in memory. -#}
{% set keyed_events %}
    select
        *,
        -- 64 bits equal for equal events (`hash` is the same function in DuckDB and Snowflake); the page URL
        -- only tells page views apart, so it enters the key and nothing downstream reads it
        hash(api_key, session_id, event_type, product_action, product_sku, event_epoch_ms, hashed_url) as event_key
    from (
        select
            -- the load is known by its time (the ledger's etl_timestamp): its id as text would cost 1.6 s more
            -- to write at 36M events than this number
            etl_timestamp,
            api_key,
            {{ document_field('raw_data', 'session_id_hash') }} as session_id,
            {{ document_field('raw_data', 'event_type') }} as event_type,
            nullif(lower(trim({{ document_field('raw_data', 'product_action') }})), '') as product_action,
            nullif(lower(trim({{ document_field('raw_data', 'product_sku_hash') }})), '') as product_sku,
            {{ document_field('raw_data', 'server_timestamp_epoch_ms', 'bigint') }} as event_epoch_ms,
            {{ document_field('raw_data', 'hashed_url') }} as hashed_url
        from {{ source('coveo', 'events_raw') }}
        {% if is_incremental() %}
        -- only the loads that arrived since the last build: history is never re-read
        where etl_timestamp > {{ staged_until }} and {{ new_loads }}
        {% endif %}
    ) as renamed
{% endset %}

with

-- The log is append-only, so the same event loaded twice appears twice. Repeats are rare: find their keys on
-- one 64-bit column and let every other event straight through.
repeated_keys as (

    {{ repeated_values('(' ~ keyed_events ~ ')', 'event_key') }}
    {% if is_incremental() %}
    union
    -- an event already built from an earlier load is a repeat too
    select built.event_key
    from {{ this }} as built
    inner join ({{ keyed_events }}) as events on built.event_key = events.event_key
    {% endif %}

),

unique_events as (

    select * exclude (hashed_url)
    from ({{ keyed_events }}) as events
    where event_key not in (select event_key from repeated_keys)

),

-- Repeated keys are grouped by the events' fields, so two different events whose keys collide both stay.
first_loads_of_repeated_events as (

    select
        min(etl_timestamp) as etl_timestamp,
        api_key,
        session_id,
        event_type,
        product_action,
        product_sku,
        event_epoch_ms,
        event_key
    from ({{ keyed_events }}) as events
    where event_key in (select event_key from repeated_keys)
    group by api_key, session_id, event_type, product_action, product_sku, event_epoch_ms, hashed_url, event_key

),

{% if is_incremental() %}
new_repeated_events as (

    select *
    from first_loads_of_repeated_events as candidate
    where not exists (
        select 1
        from {{ this }} as built
        where built.event_key = candidate.event_key
          and built.session_id = candidate.session_id
          and built.event_epoch_ms = candidate.event_epoch_ms
          and built.event_type is not distinct from candidate.event_type
          and built.product_action is not distinct from candidate.product_action
          and built.product_sku is not distinct from candidate.product_sku
    )

),
{% else %}
new_repeated_events as (

    select * from first_loads_of_repeated_events

),
{% endif %}

deduplicated as (

    select * from unique_events
    union all
    select * from new_repeated_events

),

final as (

    select
        *,
        cast({{ epoch_ms_to_timestamp('event_epoch_ms') }} as date) as event_date,
        {{ built_this_run_column() }}
    from deduplicated

)

select * from final
