{#- Rows that a dbt invocation builds carry its number, so tests can check only those rows: after an incremental
    build, the rows added or rebuilt; after a full refresh, every row. A test opts in with
    `where: "__built_this_run__"` (a singular test: `config(where=...)` and `get_where_subquery(ref(...))`).
    Tests of the raw log opt in with `where: "__not_yet_staged__"`: the loads that staging has not read yet, which
    are the ones it reads next (all of them with --full-refresh), so that an incremental build never re-reads
    history.
    `--vars '{"test_every_row": true}'` audits every row without rebuilding.
    The number is 60 bits of the invocation's random id: a constant number column costs a quarter of what the id as
    text costs to write (1.6 s less for the 36M staged events). -#}
{% macro built_this_run_column() -%}
    {{ invocation_id.replace('-', '')[:15] | int(base=16) }} as dbt_build_id
{%- endmacro %}

{#- dbt's own, with the placeholders replaced when the test runs: a `where` config is rendered when the
    project is parsed, and partial parsing would keep an earlier invocation's id. The condition is written here
    rather than in a macro of its own: after partial parsing from an older project, dbt's test context did not
    find this project's other macros from here. -#}
{% macro default__get_where_subquery(relation) -%}
    {%- set every_row = var('test_every_row', false) -%}
    {%- set build_id = invocation_id.replace('-', '')[:15] | int(base=16) -%}
    {%- set where = (config.get('where') or '')
        | replace('__built_this_run__', "true" if every_row else "dbt_build_id = " ~ build_id) -%}
    {%- if '__not_yet_staged__' in where -%}
        {%- set staged = adapter.get_relation(target.database, target.schema, 'stg_browsing_events') -%}
        {%- set since_staged = "etl_timestamp > (select coalesce(max(etl_timestamp), -1) from " ~ staged ~ ")" -%}
        {%- set where = where | replace(
            '__not_yet_staged__', "true" if every_row or flags.FULL_REFRESH or staged is none else since_staged) -%}
    {%- endif -%}
    {%- if where -%}
        {%- do return('(select * from ' ~ relation ~ ' where ' ~ where ~ ') dbt_subquery') -%}
    {%- else -%}
        {%- do return(relation) -%}
    {%- endif -%}
{%- endmacro %}
