-- Every session's first and last event, counting page views too: sessionisation by the session id.
with events as (

    select * from {{ ref('stg_browsing_events') }}

),

final as (

    select
        api_key,
        session_id,
        min(event_at) as session_start_at,
        max(event_at) as session_end_at,
        cast(min(event_at) as date) as session_date,
        count(*) as n_events,
        sum(case when event_type = 'pageview' then 1 else 0 end) as n_pageviews,
        sum(case when event_type = 'event_product' then 1 else 0 end) as n_product_events,
        max(etl_timestamp) as last_etl_timestamp
    from events
    group by api_key, session_id

)

select * from final
