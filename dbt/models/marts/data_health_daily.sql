-- Daily health of the data per organisation: what a data engineer checks before trusting a model.
-- depends_on: {{ ref('stg_browsing_events') }}
{{ config(materialized='incremental', unique_key=['api_key', 'event_date'], incremental_strategy='delete+insert') }}

with

events as (

    select * from {{ ref('stg_browsing_events') }}

),

{% if is_incremental() %}
-- days that received events since the last build are recounted whole (a day's distinct products need its
-- events; a daily load touches the newest days only)
touched_days as (

    select distinct api_key, event_date
    from {{ ref('stg_browsing_events') }}
    where {{ arrived_since_last_build() }}

),
{% endif %}

sessions as (

    select sessions.*
    from {{ ref('int_session_starts') }} as sessions
    {% if is_incremental() %}
    inner join touched_days
        on sessions.api_key = touched_days.api_key and sessions.session_date = touched_days.event_date
    {% endif %}

),

daily_events as (

    select
        events.api_key,
        events.event_date,
        count(*) as events,
        -- a count, not a sum of ones: 64 bits rather than 128 (see int_session_starts)
        count(case when events.event_type = 'event_product' then 1 end) as product_events,
        count(distinct events.product_sku) as products,
        max(events.etl_timestamp) as last_etl_timestamp
    from events
    {% if is_incremental() %}
    inner join touched_days
        on events.api_key = touched_days.api_key and events.event_date = touched_days.event_date
    {% endif %}
    group by events.api_key, events.event_date

),

daily_sessions as (

    select
        api_key,
        session_date,
        count(*) as sessions,
        avg(case when n_product_events = 0 then 1.0 else 0.0 end) as pageview_only_share
    from sessions
    group by api_key, session_date

),

final as (

    select
        daily_events.api_key,
        daily_events.event_date,
        daily_events.events,
        daily_events.product_events,
        daily_events.products,
        coalesce(daily_sessions.sessions, 0) as sessions,
        daily_sessions.pageview_only_share,
        daily_events.last_etl_timestamp
    from daily_events
    left join daily_sessions
        on daily_events.api_key = daily_sessions.api_key
       and daily_events.event_date = daily_sessions.session_date

)

select * from final
