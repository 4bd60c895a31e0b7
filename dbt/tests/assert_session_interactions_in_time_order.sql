-- Every session's interactions are listed in time order (the mart's ordered aggregation is right). Checks the
-- sessions this build added or rebuilt.
{{ config(where='__built_this_run__') }}

with sessions as (

    select * from {{ get_where_subquery(ref('sessions')) }}

)

select session_id, api_key, timestamps
from sessions
where timestamps <> {{ sorted_array('timestamps') }}
