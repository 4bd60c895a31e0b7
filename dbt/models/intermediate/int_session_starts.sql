-- Every session's first and last event, counting page views too: sessionisation by the session id.
-- Incremental: sessions that received events since the last build are recounted whole.
-- depends_on: {{ ref('stg_browsing_events') }}
{{ config(materialized='incremental', unique_key=['api_key', 'session_id'], incremental_strategy='delete+insert') }}

with

events as (

    select * from {{ ref('stg_browsing_events') }}

),

{% if is_incremental() %}
touched as (

    {{ keys_with_new_events(['api_key', 'session_id']) }}

),
{% endif %}

final as (

    select
        events.api_key,
        events.session_id,
        min(events.event_at) as session_start_at,
        max(events.event_at) as session_end_at,
        cast(min(events.event_at) as date) as session_date,
        count(*) as n_events,
        sum(case when events.event_type = 'pageview' then 1 else 0 end) as n_pageviews,
        sum(case when events.event_type = 'event_product' then 1 else 0 end) as n_product_events,
        max(events.etl_timestamp) as last_etl_timestamp
    from events
    {% if is_incremental() %}
    inner join touched on events.api_key = touched.api_key and events.session_id = touched.session_id
    {% endif %}
    group by events.api_key, events.session_id

)

select * from final
